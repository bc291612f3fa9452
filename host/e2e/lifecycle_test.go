package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/sdk"
)

func TestLifecycle(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("hello", "echo out; echo err >&2; exit 3"))
	got := h.waitTerminated("hello", 10*time.Second)
	term := got.Status.State.Terminated
	if term.ExitCode != 3 || term.Reason != "Failed" || term.StartedAt.IsZero() || term.FinishedAt.IsZero() {
		t.Fatalf("terminated = %+v, want exit 3, reason Failed, both times set", term)
	}
	for file, want := range map[string]string{sdk.StdoutLog: "out\n", sdk.StderrLog: "err\n"} {
		b, err := os.ReadFile(filepath.Join(h.dataDir, "hello", file))
		if err != nil || string(b) != want {
			t.Fatalf("%s = %q, %v; want %q", file, b, err, want)
		}
	}
	h.mustDo(204, "DELETE", "/tasks/hello", nil)
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("hello"); return !ok },
		func() string { return "the deleted task is still listed" })
	if _, err := os.Stat(filepath.Join(h.dataDir, "hello")); !os.IsNotExist(err) {
		t.Fatalf("the task's directory survived its deletion: %v", err)
	}
}

// TestTaskNotForkedByHost: the task's parent is its shim, the shim's is the
// plugin; the host forks plugins only.
func TestTaskNotForkedByHost(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", processTask("sleeper", "sleep", "30"))
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("sleeper")
		return tk.Status.State.Running != nil
	}, func() string { return "the task never ran" })
	st := h.shimState("sleeper")
	hostPID, pluginPID := h.cmd.Process.Pid, h.pluginPID()
	if got := procPPID(st.PID); got != st.ShimPID {
		t.Errorf("the task's parent is %d, want its shim %d", got, st.ShimPID)
	}
	if got := procPPID(st.ShimPID); got != pluginPID {
		t.Errorf("the shim's parent is %d, want the plugin %d", got, pluginPID)
	}
	if got := procPPID(pluginPID); got != hostPID {
		t.Errorf("the plugin's parent is %d, want the host %d", got, hostPID)
	}
	for _, c := range children(hostPID) {
		if c == st.PID || c == st.ShimPID {
			t.Errorf("process %d is a child of the host", c)
		}
	}
}

func TestTerminalStates(t *testing.T) {
	h := startHost(t)
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	timeout := int64(1)
	cases := []struct {
		name     string
		process  map[string]any
		code     int32
		signal   int32
		reason   string
		messageH string // part of the message
	}{
		{"succeeds", map[string]any{"command": []string{"true"}}, 0, 0, "Succeeded", ""},
		{"fails", map[string]any{"command": []string{"sh", "-c", "exit 42"}}, 42, 0, "Failed", ""},
		{"killed", map[string]any{"command": []string{"sh", "-c", "kill -KILL $$"}}, 137, 9, "Failed", ""},
		{"not-found", map[string]any{"command": []string{"no-such-command-anywhere"}}, 127, 0, "StartError", "not found"},
		{"not-executable", map[string]any{"command": []string{notExec}}, 126, 0, "StartError", "permission denied"},
		{"bad-workdir", map[string]any{"command": []string{"true"}, "workingDir": "/no/such/dir"}, 128, 0, "StartError", "no such file"},
		{"times-out", map[string]any{"command": []string{"sleep", "30"}, "timeoutSeconds": timeout}, 143, 15, "TaskTimeout", "timeout"},
		{"env-and-args", map[string]any{
			"command": []string{"sh", "-c"}, "args": []string{`[ "$GREETING" = hi ] && [ "$(pwd)" = /tmp ] || exit 9`},
			"env": []map[string]string{{"name": "GREETING", "value": "hello"}, {"name": "GREETING", "value": "hi"}}, "workingDir": "/tmp",
		}, 0, 0, "Succeeded", ""},
	}
	for _, c := range cases {
		h.mustDo(201, "POST", "/tasks", map[string]any{"name": c.name, "spec": map[string]any{"process": c.process}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			term := h.waitTerminated(c.name, 15*time.Second).Status.State.Terminated
			if term.ExitCode != c.code || term.Signal != c.signal || term.Reason != c.reason {
				t.Fatalf("got exit %d signal %d reason %s (%q), want %d %d %s", term.ExitCode, term.Signal, term.Reason, term.Message, c.code, c.signal, c.reason)
			}
			if !strings.Contains(term.Message, c.messageH) {
				t.Fatalf("message %q does not mention %q", term.Message, c.messageH)
			}
		})
	}
}

// pgroupMembers lists the live processes in process group pgid.
func pgroupMembers(pgid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if f[0] != "Z" && f[2] == fmt.Sprint(pgid) {
			out = append(out, pid)
		}
	}
	return out
}

func TestDeleteStopsTheWholeGroup(t *testing.T) {
	h := startHost(t)
	marker := filepath.Join(t.TempDir(), "got-term")
	h.mustDo(201, "POST", "/tasks", shTask("group", fmt.Sprintf(
		"sleep 300 & trap 'echo TERM > %s; kill $!; exit 0' TERM; while :; do sleep 0.05; done", marker)))
	var st shimState
	eventually(t, 10*time.Second, func() bool {
		var err error
		st, err = readShimState(h.dataDir, "group")
		return err == nil && len(pgroupMembers(st.PID)) >= 2
	}, func() string { return "the task never started its background child" })

	h.mustDo(204, "DELETE", "/tasks/group", nil)
	tk, ok := h.get("group")
	if ok && tk.DeletionTimestamp == nil {
		t.Fatalf("a task being deleted has no deletionTimestamp: %+v", tk)
	}
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("group"); return !ok },
		func() string { return "the task was never removed" })
	if left := pgroupMembers(st.PID); len(left) > 0 {
		t.Fatalf("processes of the deleted task are still running: %v", left)
	}
	if b, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(b)) != "TERM" {
		t.Fatalf("the task did not get SIGTERM first: %q %v", b, err)
	}
}

func TestDeleteKillsAfterGrace(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("stubborn", "trap '' TERM; while :; do sleep 0.05; done"))
	var st shimState
	eventually(t, 10*time.Second, func() bool {
		var err error
		st, err = readShimState(h.dataDir, "stubborn")
		return err == nil
	}, func() string { return "the task never started" })
	began := time.Now()
	h.mustDo(204, "DELETE", "/tasks/stubborn?gracePeriodSeconds=1", nil)
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("stubborn"); return !ok },
		func() string { return "the task was never removed" })
	if took := time.Since(began); took < time.Second {
		t.Fatalf("deleted after %s, before the 1s grace period", took)
	}
	if left := pgroupMembers(st.PID); len(left) > 0 {
		t.Fatalf("processes of the deleted task are still running: %v", left)
	}
}

// TestGetWaits: GET /tasks/{name}?wait= answers as soon as the task has
// terminated, or when the wait is over.
func TestGetWaits(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("short", "sleep 0.3; exit 5"))
	h.mustDo(201, "POST", "/tasks", processTask("long", "sleep", "60"))

	began := time.Now()
	var got api.Task
	if err := json.Unmarshal(h.mustDo(200, "GET", "/tasks/short?wait=30s", nil), &got); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); got.Status.State.Terminated == nil || got.Status.State.Terminated.ExitCode != 5 || took > 10*time.Second {
		t.Fatalf("after %s: %+v, want terminated with 5", took, got.Status.State)
	}

	began = time.Now()
	var long api.Task
	if err := json.Unmarshal(h.mustDo(200, "GET", "/tasks/long?wait=300ms", nil), &long); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); long.Status.State.Running == nil || took < 300*time.Millisecond {
		t.Fatalf("a wait that ran out answered after %s with %+v", took, long.Status.State)
	}
	h.mustDo(400, "GET", "/tasks/long?wait=forever", nil)
	h.mustDo(400, "GET", "/tasks/long?wait=1h", nil)
	h.mustDo(404, "GET", "/tasks/none?wait=1s", nil)
}
