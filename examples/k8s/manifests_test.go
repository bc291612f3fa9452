// Package k8s holds deployment examples; its test parses each manifest
// strictly with the Kubernetes API types, so a typo cannot hide in them.
package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

func TestManifestsParseStrictly(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests found (%v)", err)
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
			for {
				var raw json.RawMessage
				if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					t.Fatal(err)
				}
				var kind struct{ Kind string }
				if err := json.Unmarshal(raw, &kind); err != nil {
					t.Fatal(err)
				}
				var obj any
				switch kind.Kind {
				case "Pod":
					obj = &corev1.Pod{}
				default:
					t.Fatalf("no check for kind %q", kind.Kind)
				}
				strict := json.NewDecoder(bytes.NewReader(raw))
				strict.DisallowUnknownFields()
				if err := strict.Decode(obj); err != nil {
					t.Fatalf("%s: %v", kind.Kind, err)
				}
				if pod, ok := obj.(*corev1.Pod); ok {
					checkSidecar(t, pod)
				}
			}
		})
	}
}

// checkSidecar checks what sidecar mode needs of a pod.
func checkSidecar(t *testing.T, pod *corev1.Pod) {
	if pod.Spec.ShareProcessNamespace == nil || !*pod.Spec.ShareProcessNamespace {
		t.Error("sidecar mode needs shareProcessNamespace: true")
	}
	var mainName string
	for _, c := range pod.Spec.Containers {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--main-container-name="); ok {
				mainName = v
			}
		}
	}
	found := false
	for _, c := range pod.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "SANDBOX_MAIN_CONTAINER" && e.Value == mainName {
				found = true
			}
		}
	}
	if mainName == "" || !found {
		t.Errorf("no container carries SANDBOX_MAIN_CONTAINER=%q to match --main-container-name", mainName)
	}
}
