package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/internal/testbin"
)

// TestReadmeExamples runs every curl example of the README's HTTP API
// section, as written but for the address, against a host started the way
// `make run` starts it, in order.
func TestReadmeExamples(t *testing.T) {
	root, err := testbin.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(b)
	start := strings.Index(section, "\n## HTTP API")
	if start < 0 {
		t.Fatal("README has no HTTP API section")
	}
	section = section[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	blocks := regexp.MustCompile("(?s)```sh\n(.*?)```").FindAllStringSubmatch(section, -1)
	if len(blocks) < 6 {
		t.Fatalf("found %d examples in the README's HTTP API section, want one per endpoint", len(blocks))
	}
	h := startHost(t)
	endpoints := map[string]bool{}
	for _, m := range blocks {
		example := m[1]
		if !strings.Contains(example, "http://127.0.0.1:5758/") {
			t.Fatalf("example does not address make run's 127.0.0.1:5758:\n%s", example)
		}
		for _, ep := range []string{"/health", "/tasks/", "/tasks ", "/setTasks", "/getTasks", "-X DELETE", "/logs", "/metrics", "/runtimes"} {
			if strings.Contains(example, ep) {
				endpoints[ep] = true
			}
		}
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(example, "http://127.0.0.1:5758", h.url))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("example failed: %v\n%s\noutput: %s", err, example, out)
		}
		if len(strings.TrimSpace(string(out))) == 0 {
			continue // DELETE answers 204 with no body
		}
		if strings.Contains(example, "/logs") || strings.Contains(example, "/metrics") {
			// Plain text, not JSON; an error would be a JSON object.
			if strings.HasPrefix(string(out), "{") {
				t.Fatalf("example got an error:\n%s\noutput: %s", example, out)
			}
			continue
		}
		var v any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("example printed no JSON: %v\n%s\noutput: %s", err, example, out)
		}
		if m, ok := v.(map[string]any); ok && m["code"] != nil {
			t.Fatalf("example got an error:\n%s\noutput: %s", example, out)
		}
	}
	if len(endpoints) != 9 {
		t.Fatalf("the examples cover %v, want all nine endpoints", endpoints)
	}
	// The sequence ends with task-beta done, and task-alpha (deleted) and
	// my-first-task (left out of setTasks) gone.
	beta := h.waitTerminated("task-beta", 10*time.Second)
	if beta.Status.State.Terminated.Reason != "Succeeded" {
		t.Fatalf("task-beta: %+v", beta.Status.State.Terminated)
	}
	eventually(t, 15*time.Second, func() bool {
		_, alpha := h.get("task-alpha")
		_, first := h.get("my-first-task")
		return !alpha && !first
	}, func() string { return "the deleted tasks are still there" })
}
