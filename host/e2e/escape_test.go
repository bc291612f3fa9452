package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// escapeScripts start processes that leave the task's process group, each
// printing "<pid> <marker>" of the process that escapes: the marker is in
// that process's command line, so a recycled PID is never taken for it.
var escapeScripts = []struct{ name, script string }{
	{"setsid", `setsid sleep 1001 & echo "$! 1001"`},
	{"setpgrp", `perl -e 'setpgrp(0,0); exec "sleep", "1002"' & echo "$! 1002"`},
	{"double fork", `sh -c 'setsid sleep 1003 & echo "$! 1003"'`},
	// A real daemon: forks, its parent exits, it calls setsid.
	// (The task runs in its own directory.)
	{"ssh-agent", `eval "$(ssh-agent -a "$PWD/agent.sock")" >/dev/null; echo "$SSH_AGENT_PID $PWD/agent.sock"`},
}

// TestTaskLeavesNothingBehind: whatever a task does to leave its process
// group, nothing it started is alive once it has ended, whether its main
// process exits or the task is deleted while running.
func TestTaskLeavesNothingBehind(t *testing.T) {
	h := startHost(t)
	for _, ending := range []string{"exits", "deleted"} {
		t.Run(ending, func(t *testing.T) {
			var all []string
			for _, e := range escapeScripts {
				all = append(all, e.script)
			}
			script := strings.Join(all, "\n")
			name := "escape-" + ending
			// Long enough to see the escapes running first.
			script += "\nsleep 1"
			if ending == "deleted" {
				script += "\nexec sleep 300"
			}
			h.mustDo(201, "POST", "/tasks", shTask(name, script))
			escaped := awaitEscapees(t, h, name)
			t.Cleanup(func() {
				for pid, marker := range escaped {
					if runs(pid, marker) {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			// Polled: one may be in the middle of an exec (perl into sleep),
			// when its command line reads empty.
			for pid, marker := range escaped {
				eventually(t, 10*time.Second, func() bool { return runs(pid, marker) },
					func() string {
						return fmt.Sprintf("escaped process %d (%s) is not running before the task ends", pid, marker)
					})
			}
			if ending == "deleted" {
				h.mustDo(204, "DELETE", "/tasks/"+name, nil)
				eventually(t, 15*time.Second, func() bool { _, ok := h.get(name); return !ok },
					func() string { return "the task was never removed" })
			} else {
				h.waitTerminated(name, 15*time.Second)
			}
			var alive []string
			for pid, marker := range escaped {
				if runs(pid, marker) {
					alive = append(alive, fmt.Sprintf("%d (%s)", pid, marker))
				}
			}
			if len(alive) > 0 {
				t.Fatalf("processes the task started are alive after it %s: %v", ending, alive)
			}
		})
	}
}

// awaitEscapees waits for every escape of escapeScripts that task name
// runs to report, and returns them.
func awaitEscapees(t *testing.T, h *hostProc, name string) map[int]string {
	t.Helper()
	out := filepath.Join(h.dataDir, name, sdk.StdoutLog)
	var escaped map[int]string
	eventually(t, 15*time.Second, func() bool {
		escaped = escapees(out)
		return len(escaped) == len(escapeScripts)
	}, func() string { return fmt.Sprintf("the escapes did not all report: %v", escaped) })
	return escaped
}

// escapees reads "<pid> <marker>" lines.
func escapees(path string) map[int]string {
	b, _ := os.ReadFile(path)
	out := map[int]string{}
	for _, line := range strings.Split(string(b), "\n") {
		pid, marker, ok := strings.Cut(line, " ")
		if n, err := strconv.Atoi(pid); ok && err == nil && n > 0 {
			out[n] = marker
		}
	}
	return out
}

// runs reports whether pid is alive (not a zombie) with marker in its
// command line.
func runs(pid int, marker string) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(strings.ReplaceAll(string(cmdline), "\x00", " "), marker) {
		return false
	}
	return alive(pid)
}
