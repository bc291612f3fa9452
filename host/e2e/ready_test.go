package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// TestRuntimeThatCannotStart: a runtime the executor has but cannot start
// (its shim missing, its CRI socket unreachable) is the node's problem, not
// the client's: creates get a 503 naming the cause, /readyz is 503 and
// /health 200; once the cause is fixed, tasks run without a restart of the
// host.
func TestRuntimeThatCannotStart(t *testing.T) {
	t.Run("missing shim", func(t *testing.T) {
		// The operator names a shim on disk instead of the executable's own.
		shimPath := filepath.Join(t.TempDir(), "task-executor-shim")
		h := &hostProc{t: t, dataDir: dataDir(t), env: []string{"TASK_EXECUTOR_SHIM=" + shimPath}}
		h.start()
		t.Cleanup(h.cleanup)
		h.cannotStart(processTask("early", "true"), "task-executor-shim not found")
		if err := shim.Build(t.Context(), shimPath); err != nil {
			t.Fatal(err)
		}
		h.recovers(processTask("late", "true"))
	})
	t.Run("unreachable CRI socket", func(t *testing.T) {
		env := containerdtest.Require(t)
		socket := filepath.Join(t.TempDir(), "containerd.sock")
		h := startHost(t, "--enable-container-mode", "--cri-socket", socket)
		task := func(name string) map[string]any {
			return map[string]any{"name": name, "spec": map[string]any{"container": map[string]any{
				"name": "c", "image": env.BusyboxImage, "imagePullPolicy": "IfNotPresent", "command": []string{"true"}}}}
		}
		h.cannotStart(task("early"), socket)
		// The socket appears, as a node's containerd comes up late.
		if err := os.Symlink(env.Socket, socket); err != nil {
			t.Fatal(err)
		}
		h.recovers(task("late"))
		h.mustDo(204, "DELETE", "/tasks/late", nil)
	})
}

// cannotStart checks the answers while a runtime cannot start.
func (h *hostProc) cannotStart(task map[string]any, cause string) {
	t := h.t
	t.Helper()
	eventually(t, 60*time.Second, func() bool {
		code, body := h.do("POST", "/tasks", task)
		return code == 503 && strings.Contains(string(body), cause)
	}, func() string {
		code, body := h.do("POST", "/tasks", task)
		return "create: " + string(body) + " " + http503(code)
	})
	if code, body := h.do("GET", "/readyz", nil); code != 503 || !strings.Contains(string(body), cause) {
		t.Errorf("/readyz: %d %s, want 503 naming %q", code, body, cause)
	}
	if code, _ := h.do("GET", "/health", nil); code != 200 {
		t.Errorf("/health: %d, want 200", code)
	}
	if len(h.list()) != 0 {
		t.Errorf("a create answered 503 kept a task: %+v", h.list())
	}
}

// recovers checks that tasks run once the runtime can start, with no
// restart of the host.
func (h *hostProc) recovers(task map[string]any) {
	t := h.t
	t.Helper()
	pid := h.cmd.Process.Pid
	eventually(t, 90*time.Second, func() bool { code, _ := h.do("GET", "/readyz", nil); return code == 200 },
		func() string { _, body := h.do("GET", "/readyz", nil); return "never ready: " + string(body) })
	h.mustDo(201, "POST", "/tasks", task)
	name := task["name"].(string)
	if term := h.waitTerminated(name, 60*time.Second).Status.State.Terminated; term.ExitCode != 0 {
		t.Fatalf("task %s: %+v", name, term)
	}
	if h.cmd.Process.Pid != pid {
		t.Fatal("the host was restarted")
	}
}

func http503(code int) string {
	if code == 503 {
		return "(503)"
	}
	return "(want 503)"
}
