package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
)

// TestSidecarMode: with --enable-sidecar-mode, process tasks run in the
// main container. A task created before the main container waits for it;
// a kill -9 of the host while it runs loses nothing; a deletion leaves
// nothing of the task in the container.
func TestSidecarMode(t *testing.T) {
	name := fmt.Sprintf("main-%d", os.Getpid())
	h := startHost(t, "--enable-sidecar-mode", "--main-container-name", name)

	h.mustDo(201, "POST", "/tasks", shTask("early", "hostname; sleep 1.5; exit 4"))
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("early")
		w := tk.Status.State.Waiting
		return w != nil && w.Reason == "MainContainerNotFound"
	}, func() string { return "the task never waited for the main container" })

	c := runtimetest.StartContainer(t, "side-box", "SANDBOX_MAIN_CONTAINER="+name)
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("early")
		return tk.Status.State.Running != nil
	}, func() string { return "the task did not start once the main container was there" })

	h.kill9()
	h.restart()
	term := h.waitTerminated("early", 20*time.Second).Status.State.Terminated
	if term.ExitCode != 4 {
		t.Fatalf("after a kill -9 of the host: %+v, want exit 4", term)
	}
	if out, _ := os.ReadFile(filepath.Join(h.dataDir, "early", sdk.StdoutLog)); strings.TrimSpace(string(out)) != "side-box" {
		t.Fatalf("stdout %q: the task did not run in the main container", out)
	}

	h.mustDo(201, "POST", "/tasks", shTask("busy", "sleep 300 & sleep 300 & while :; do sleep 0.1; done"))
	eventually(t, 10*time.Second, func() bool { return len(c.Processes(t)) >= 4 },
		func() string { return fmt.Sprintf("the task's processes never showed up: %v", c.Processes(t)) })
	h.mustDo(204, "DELETE", "/tasks/busy", nil)
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("busy"); return !ok },
		func() string { return "the task was never removed" })
	if left := c.Processes(t); len(left) != 1 || left[0] != c.Pid {
		t.Fatalf("processes left in the main container: %v, want only %d", left, c.Pid)
	}
}
