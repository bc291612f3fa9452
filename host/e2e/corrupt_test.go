package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/host/store"
)

// getTask returns a task and the status of its GET.
func getTask(t *testing.T, c *apiClient, name string) (api.Task, int) {
	t.Helper()
	code, body, err := c.call("GET", "/tasks/"+name, nil)
	if err != nil {
		t.Fatalf("GET /tasks/%s: %v", name, err)
	}
	var tk api.Task
	if code == 200 {
		if err := json.Unmarshal(body, &tk); err != nil {
			t.Fatalf("GET /tasks/%s: %v: %s", name, err, body)
		}
	}
	return tk, code
}

// quarantineLogs returns the tasks the host's log says it quarantined.
func quarantineLogs(logs string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(logs, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil || m["@message"] != "cannot read a task's record; moved it to quarantine" {
			continue
		}
		if name, ok := m["task"].(string); ok {
			out[name] = true
		}
	}
	return out
}

// TestCorruptStateFiles: a record the host cannot read, as a disk fault
// leaves it, costs that task alone: the host starts, moves it to
// quarantine and says so, and keeps every other task as it was. A final
// state or deletion that does not parse is as if it were not there.
func TestCorruptStateFiles(t *testing.T) {
	h := startHost(t)
	c := newAPIClient(h.url)
	cases := []struct {
		name, script string
		// corrupt damages the task's files while the host is down:
		// file gets content, or is cut in the middle of its first JSON
		// value (truncate), or keeps that value and gets content after it
		// instead of what followed (final: the final state's line).
		file, content   string
		truncate, final bool
		quarantined     bool
	}{
		{name: "intact", script: "exit 3"},
		{name: "intact-ok", script: "exit 0"},
		{name: "running", script: "sleep 60"},
		{name: "torn-record", script: "exit 4", file: store.RecordFile, truncate: true, quarantined: true},
		{name: "empty-record", script: "exit 4", file: store.RecordFile, content: "", quarantined: true},
		{name: "foreign-record", script: "exit 4", file: store.RecordFile, quarantined: true,
			content: `{"name":"intact","spec":{"process":{"command":["true"]}},"runtime":"process"}`},
		{name: "garbled-final", script: "exit 5", file: store.RecordFile, final: true, content: "\n\x00\xffnot json{"},
		{name: "mistyped-final", script: "exit 6", file: store.RecordFile, final: true, content: `
{"terminated":"yes"}`},
		{name: "torn-deletion", script: "exit 7", file: "deletion.json", content: `{"name":"torn-deletion","at":"20`},
	}
	for _, tc := range cases {
		if code, body, err := c.call("POST", "/tasks", shTask(tc.name, tc.script)); code != 201 {
			t.Fatalf("create %s: %d %v %s", tc.name, code, err, body)
		}
	}
	before := map[string]api.Task{}
	for _, tc := range cases {
		tc := tc
		eventually(t, 20*time.Second, func() bool {
			tk, _ := getTask(t, c, tc.name)
			before[tc.name] = tk
			if tc.name == "running" {
				return tk.Status.State.Running != nil
			}
			return tk.Status.State.Terminated != nil
		}, func() string {
			return fmt.Sprintf("task %s never got going: %+v", tc.name, before[tc.name].Status.State)
		})
	}
	running := h.shimState("running")
	c.close()
	h.stop()

	for _, tc := range cases {
		path := filepath.Join(h.dataDir, tc.name, tc.file)
		switch {
		case tc.file == "":
			continue
		case tc.truncate, tc.final:
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// The record is the file's first line (the final state
			// follows on a line of its own).
			rec, _, _ := bytes.Cut(b, []byte("\n"))
			if tc.truncate {
				rec = rec[:len(rec)/2]
			}
			if err := os.WriteFile(path, append(rec, tc.content...), 0o600); err != nil {
				t.Fatal(err)
			}
		default:
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}

	h.restart()
	c = newAPIClient(h.url)
	defer c.close()
	logged := quarantineLogs(h.logs.String())
	for _, tc := range cases {
		_, code := getTask(t, c, tc.name)
		if !tc.quarantined {
			if code != 200 {
				t.Errorf("task %s: GET %d after the restart, want it kept", tc.name, code)
			}
			if logged[tc.name] {
				t.Errorf("task %s was quarantined; only its %s was damaged", tc.name, tc.file)
			}
			continue
		}
		if code != 404 {
			t.Errorf("task %s with a damaged record: GET %d, want 404", tc.name, code)
		}
		if !logged[tc.name] {
			t.Errorf("task %s: no log line says it was quarantined", tc.name)
		}
		if _, err := os.Stat(filepath.Join(h.dataDir, tc.name)); !os.IsNotExist(err) {
			t.Errorf("task %s: its directory is still in the data directory (%v)", tc.name, err)
		}
		kept, _ := filepath.Glob(filepath.Join(h.dataDir, ".quarantine", tc.name+"-*", store.RecordFile))
		if len(kept) != 1 {
			t.Errorf("task %s: %d records kept in quarantine, want 1", tc.name, len(kept))
		}
	}

	// What survived is as it was: a valid final state stands as written,
	// one that does not parse is asked of the runtime again.
	for _, name := range []string{"intact", "intact-ok"} {
		tk, _ := getTask(t, c, name)
		if got, want := tk.Status.State, before[name].Status.State; !equalJSON(got, want) {
			t.Errorf("task %s after the restart: %+v, want %+v", name, got.Terminated, want.Terminated)
		}
	}
	for _, name := range []string{"garbled-final", "mistyped-final", "torn-deletion"} {
		var tk api.Task
		eventually(t, 20*time.Second, func() bool {
			tk, _ = getTask(t, c, name)
			return tk.Status.State.Terminated != nil
		}, func() string { return fmt.Sprintf("task %s never terminated again: %+v", name, tk.Status.State) })
		got, want := tk.Status.State.Terminated, before[name].Status.State.Terminated
		if got.ExitCode != want.ExitCode || got.Reason != want.Reason || !got.FinishedAt.Equal(&want.FinishedAt) {
			t.Errorf("task %s after the restart: %+v, want %+v", name, got, want)
		}
		if tk.DeletionTimestamp != nil {
			t.Errorf("task %s is being deleted after the restart; no deletion was ever complete", name)
		}
	}
	tk, _ := getTask(t, c, "running")
	if tk.Status.State.Running == nil || !tk.Status.State.Running.StartedAt.Equal(&before["running"].Status.State.Running.StartedAt) {
		t.Errorf("the running task after the restart: %+v, want still running since %v", tk.Status.State, before["running"].Status.State.Running.StartedAt)
	}
	if st := h.shimState("running"); st != running {
		t.Errorf("the running task's shim after the restart: %+v, want %+v (the same)", st, running)
	}

	// The damaged files do not stand in the way of what comes next: the
	// torn deletion is written anew, and a quarantined name is free.
	if code, body, err := c.call("DELETE", "/tasks/torn-deletion", nil); code != 204 {
		t.Fatalf("DELETE torn-deletion: %d %v %s", code, err, body)
	}
	if code, body, err := c.call("POST", "/tasks", shTask("torn-record", "exit 9")); code != 201 {
		t.Fatalf("creating a task under a quarantined name: %d %v %s", code, err, body)
	}
	eventually(t, 20*time.Second, func() bool {
		_, gone := getTask(t, c, "torn-deletion")
		tk, _ := getTask(t, c, "torn-record")
		return gone == 404 && tk.Status.State.Terminated != nil && tk.Status.State.Terminated.ExitCode == 9
	}, func() string { return "the deletion or the new task under a quarantined name did not complete" })
}

func equalJSON(a, b any) bool {
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(x) == string(y)
}
