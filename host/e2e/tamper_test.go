package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// TestQuarantinedRunningTaskEnds: a running task whose record was
// corrupted while the host was down is moved to quarantine at the next
// start, and none of its processes goes on running unmanaged.
func TestQuarantinedRunningTaskEnds(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("doomed", "exec sleep 3201"))
	eventually(t, 10*time.Second, func() bool { tk, _ := h.get("doomed"); return tk.Status.State.Running != nil },
		func() string { return "the task never ran" })
	// A clean stop: the task keeps running, and its record is in its
	// directory alone (not also in the create log, which would restore it).
	h.stop()
	if err := os.WriteFile(filepath.Join(h.dataDir, "doomed", "task.json"), []byte("{not a record"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !sleepRuns("3201") {
		t.Fatal("the task's process is not running before the restart")
	}
	h.restart()
	if _, ok := h.get("doomed"); ok {
		t.Fatal("the task with a corrupted record is listed")
	}
	if !quarantineLogs(h.logs.String())["doomed"] {
		t.Fatalf("the host's log does not say the task was quarantined:\n%s", h.logs.String())
	}
	eventually(t, 5*time.Second, func() bool { return !sleepRuns("3201") },
		func() string { return "the quarantined task's process still runs" })
}

// TestSymlinkedTaskDir: a task's directory replaced by a symbolic link to a
// directory outside the data directory, while the task runs and while the
// host is down: the host reads and writes nothing there (the output, the
// final state, the deletion), and at the next start quarantines the link
// and says so.
func TestSymlinkedTaskDir(t *testing.T) {
	h := startHost(t)
	outside := t.TempDir()
	files := map[string]string{
		sdk.StdoutLog: "a secret outside the data directory\n",
		"task.json":   `{"name":"victim","spec":{"process":{"command":["true"]}},"runtime":"process","createdAt":"2026-01-01T00:00:00Z","state":{}}` + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(outside, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	unchanged := func(when string) {
		t.Helper()
		entries, _ := os.ReadDir(outside)
		if len(entries) != len(files) {
			t.Errorf("%s: the outside directory holds %d files, want its %d", when, len(entries), len(files))
		}
		for name, content := range files {
			if b, err := os.ReadFile(filepath.Join(outside, name)); err != nil || string(b) != content {
				t.Errorf("%s: the outside %s changed: %q %v", when, name, b, err)
			}
		}
	}
	swap := func(name string) {
		t.Helper()
		dir := filepath.Join(h.dataDir, name)
		// The real directory is moved aside (its shim keeps writing there).
		if err := os.Rename(dir, filepath.Join(t.TempDir(), name)); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(outside, dir); err != nil {
			t.Fatal(err)
		}
	}

	// While the task runs: its output, its end and its deletion.
	h.mustDo(201, "POST", "/tasks", shTask("victim", "sleep 1; exit 3"))
	eventually(t, 10*time.Second, func() bool { tk, _ := h.get("victim"); return tk.Status.State.Running != nil },
		func() string { return "the task never ran" })
	swap("victim")
	if code, body := h.do("GET", "/tasks/victim/logs", nil); code == 200 || strings.Contains(string(body), "secret") {
		t.Errorf("GET logs of the linked task: %d %s; want a refusal, nothing from outside", code, body)
	}
	h.waitTerminated("victim", 10*time.Second)
	unchanged("after the task ended")
	h.mustDo(204, "DELETE", "/tasks/victim", nil)
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("victim"); return !ok },
		func() string { return "the linked task was never removed" })
	unchanged("after the task was deleted")

	// While the host is down.
	h.mustDo(201, "POST", "/tasks", shTask("victim2", "exit 0"))
	h.waitTerminated("victim2", 10*time.Second)
	h.stop()
	swap("victim2")
	h.restart()
	if _, ok := h.get("victim2"); ok {
		t.Error("a task whose directory is a link is listed after the restart")
	}
	logged := false
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["task"] == "victim2" && strings.Contains(line, "symbolic link") && strings.Contains(line, "quarantine") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("the host's log does not say the linked task directory was quarantined:\n%s", h.logs.String())
	}
	unchanged("after the restart")
}
