// Package k8s holds deployment examples; its tests parse each manifest
// strictly with the Kubernetes API types, so a typo cannot hide in them,
// and check the repository's Dockerfile against the host's defaults.
package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
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
					checkPod(t, pod)
				}
			}
		})
	}
}

// checkPod checks a pod by the mode its executor runs in.
func checkPod(t *testing.T, pod *corev1.Pod) {
	exec := executor(t, pod)
	switch {
	case slices.Contains(exec.Args, "--enable-sidecar-mode"):
		checkSidecar(t, pod)
	case slices.Contains(exec.Args, "--enable-container-mode"):
		checkContainerMode(t, pod, exec)
	default:
		t.Errorf("container %s enables neither sidecar nor container mode", exec.Name)
	}
}

// executor returns the pod's task-executor container.
func executor(t *testing.T, pod *corev1.Pod) *corev1.Container {
	for i, c := range pod.Spec.Containers {
		if strings.HasPrefix(c.Image, "task-executor:") {
			return &pod.Spec.Containers[i]
		}
	}
	t.Fatalf("pod %s has no task-executor container", pod.Name)
	return nil
}

// flagValues returns the values of --name=VALUE among args.
func flagValues(args []string, name string) []string {
	var out []string
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			out = append(out, v)
		}
	}
	return out
}

// checkContainerMode checks what container mode needs of a pod: the
// node's containerd socket, the pod's UID (tasks run in its sandbox), the
// data directory on a volume of the pod, and every --volume path the same
// on the node as in the executor, since containerd resolves them on the
// node.
func checkContainerMode(t *testing.T, pod *corev1.Pod, exec *corev1.Container) {
	hostPaths := map[string]string{} // volume name -> path on the node
	for _, v := range pod.Spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	// nodePath maps a path in the executor to the node, if a hostPath
	// volume mounted at the same path holds it.
	nodePath := func(p string) bool {
		for _, m := range exec.VolumeMounts {
			hp, ok := hostPaths[m.Name]
			if ok && hp == m.MountPath && m.SubPath == "" && m.SubPathExpr == "" &&
				(p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) {
				return true
			}
		}
		return false
	}
	// onVolume reports whether a volume of the pod is mounted at p.
	onVolume := func(p string) bool {
		for _, m := range exec.VolumeMounts {
			if m.MountPath == p {
				return true
			}
		}
		return false
	}

	socket := "/var/run/containerd/containerd.sock" // the host's default --cri-socket
	if v := flagValues(exec.Args, "cri-socket"); len(v) > 0 {
		socket = v[len(v)-1]
	}
	if !nodePath(socket) {
		t.Errorf("the CRI socket %s is not the node's: mount it from a hostPath at the same path", socket)
	}
	uid := false
	for _, e := range exec.Env {
		uid = uid || e.Name == "POD_UID" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.uid"
	}
	if !uid && len(flagValues(exec.Args, "pod-uid")) == 0 {
		t.Error("container mode beside a kubelet needs the pod's UID (POD_UID from the downward API's metadata.uid)")
	}
	dataDirs := flagValues(exec.Args, "data-dir")
	if len(dataDirs) == 0 || !onVolume(dataDirs[len(dataDirs)-1]) {
		t.Errorf("--data-dir=%v must be the mount path of a volume of the pod (the executor finds it on the node from its mounts)", dataDirs)
	}
	volumes := flagValues(exec.Args, "volume")
	if len(volumes) == 0 {
		t.Error("the container-mode example offers no --volume")
	}
	for _, v := range volumes {
		name, path, ok := strings.Cut(v, "=")
		switch {
		case !ok:
			t.Errorf("--volume=%s is not NAME=HOSTPATH", v)
		case hostPaths[name] != path:
			t.Errorf("--volume=%s: the pod has no hostPath volume %q at %s", v, name, path)
		case !nodePath(path):
			t.Errorf("--volume=%s: the executor does not mount it at %s", v, path)
		}
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
	// What a task needs the executor to have to get main's confinement
	// (README, Sidecar mode; host/e2e's sidecar pod tests run this pod).
	sc := executor(t, pod).SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		return
	}
	if sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "SYS_ADMIN") || !slices.Contains(sc.Capabilities.Add, "SYS_PTRACE") || len(sc.Capabilities.Drop) > 0 {
		t.Error("the sidecar needs SYS_ADMIN and SYS_PTRACE on top of the default capabilities")
	}
	if sc == nil || sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined {
		t.Error("the sidecar needs seccompProfile Unconfined: under a filter it cannot read main's")
	}
	if sc == nil || sc.AppArmorProfile == nil || sc.AppArmorProfile.Type != corev1.AppArmorProfileTypeUnconfined {
		t.Error("the sidecar needs appArmorProfile Unconfined where AppArmor is on")
	}
}
