package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
)

// deleteBound is how long after its grace period a DELETE is carried out
// at the latest, whatever its runtime does (README "Limits": 30 s, plus
// the controller's retry tick and the removal).
const deleteBound = 35 * time.Second

// TestStuckPlugin: a plugin that hangs in Init, in Start, in Stop, or stops
// answering altogether (SIGSTOP). The host serves /health within a second
// of its start, the other runtimes' tasks run, the stuck plugin is
// restarted, and every DELETE completes within its grace period and the
// stated bound, leaving none of the task's processes.
func TestStuckPlugin(t *testing.T) {
	dir := pluginDir(t, "stuck", "./internal/stuckplugin")
	for _, in := range []string{"init", "start", "stop", "sigstop"} {
		t.Run(in, func(t *testing.T) {
			t.Parallel()
			env := []string{"STUCK_IN=" + in}
			if in == "sigstop" {
				env = nil
			}
			h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, env: env, early: true}
			began := time.Now()
			h.start()
			t.Cleanup(h.cleanup)
			code, _ := h.do("GET", "/health", nil)
			if took := time.Since(began); code != 200 || took > time.Second {
				t.Fatalf("/health answered %d %s after the start, want 200 within 1s", code, took)
			}
			// The built-in runtime works meanwhile.
			eventually(t, 40*time.Second, func() bool {
				code, _ := h.do("POST", "/tasks", shTask("other", "exit 0"))
				return code == http.StatusCreated
			}, func() string { return "a task on the process runtime was never accepted" })
			if term := h.waitTerminated("other", 20*time.Second).Status.State.Terminated; term.ExitCode != 0 {
				t.Fatalf("the process runtime's task: %+v", term)
			}
			if in == "init" {
				eventually(t, 40*time.Second, func() bool { return restarts(h, "stuck") >= 2 },
					func() string { return "the plugin stuck in Init was not restarted" })
				return
			}
			marker := fmt.Sprintf("30%02d", len(in))
			h.mustDo(201, "POST", "/tasks", map[string]any{"name": "on-stuck", "spec": map[string]any{
				"runtime": "stuck", "process": map[string]any{"command": []string{"sleep", marker}}}})
			if in != "start" {
				eventually(t, 20*time.Second, func() bool { tk, _ := h.get("on-stuck"); return tk.Status.State.Running != nil },
					func() string { return "the task on the stuck runtime never ran" })
			}
			if in == "sigstop" {
				plugin := h.pluginPIDOf("stuck")
				if err := syscall.Kill(plugin, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
			}
			deleted := time.Now()
			h.mustDo(204, "DELETE", "/tasks/on-stuck?gracePeriodSeconds=1", nil)
			eventually(t, time.Second+deleteBound, func() bool { _, ok := h.get("on-stuck"); return !ok },
				func() string { return fmt.Sprintf("the DELETE was not carried out within 1s + %s", deleteBound) })
			t.Logf("DELETE carried out after %s", time.Since(deleted).Round(100*time.Millisecond))
			eventually(t, 5*time.Second, func() bool { return !sleepRuns(marker) },
				func() string { return "the task's process (sleep " + marker + ") outlived its deletion" })
			if n := restarts(h, "stuck"); n < 1 {
				t.Errorf("the stuck plugin was restarted %d times, want at least once", n)
			}
		})
	}
}

// restarts is how often the host restarted the runtime's plugin.
func restarts(h *hostProc, runtime string) int {
	code, body := h.do("GET", "/runtimes", nil)
	if code != 200 {
		return -1
	}
	var rts []api.Runtime
	if json.Unmarshal(body, &rts) != nil {
		return -1
	}
	for _, r := range rts {
		if r.Name == runtime || (r.Name == "" && strings.HasSuffix(r.PluginPath, "/"+runtime)) {
			return r.Restarts
		}
	}
	return 0
}

// sleepRuns reports whether a live "sleep <arg>" process exists.
func sleepRuns(arg string) bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && string(b) == "sleep\x00"+arg+"\x00" {
			if pid, err := strconv.Atoi(e.Name()); err == nil && alive(pid) {
				return true
			}
		}
	}
	return false
}

// TestSlowValidate: while a plugin's Validate takes 5 s (a slow runtime),
// for a create and for a setTasks that names a new task on it, creates and
// deletes on the built-in runtime go through, each long before the slow
// requests answer: nothing waits for a call to a plugin but the requests
// that need its answer.
func TestSlowValidate(t *testing.T) {
	dir := pluginDir(t, "stuck", "./internal/stuckplugin")
	mark := filepath.Join(t.TempDir(), "in-validate")
	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, env: []string{"SLOW_VALIDATE=5s", "SLOW_VALIDATE_MARK=" + mark}}
	h.start()
	t.Cleanup(h.cleanup)
	onSlow := func(name string) map[string]any {
		return map[string]any{"name": name, "spec": map[string]any{"runtime": "stuck", "process": map[string]any{"command": []string{"true"}}}}
	}
	h.mustDo(201, "POST", "/tasks", processTask("kept", "sleep", "600"))
	slowDone := make(chan string, 2)
	go func() {
		code, body := h.do("POST", "/tasks", onSlow("slow-create"))
		slowDone <- fmt.Sprintf("create: %d %s", code, body)
	}()
	go func() {
		code, body := h.do("POST", "/setTasks", []any{processTask("kept", "sleep", "600"), onSlow("slow-sync")})
		slowDone <- fmt.Sprintf("setTasks: %d %.200s", code, body)
	}()
	eventually(t, 20*time.Second, func() bool { _, err := os.Stat(mark); return err == nil },
		func() string { return "the slow plugin's Validate was never called" })
	for i := 0; i < 10; i++ {
		name := fmt.Sprintf("quick-%d", i)
		h.mustDo(201, "POST", "/tasks", processTask(name, "true"))
		h.mustDo(204, "DELETE", "/tasks/"+name, nil)
		select {
		case done := <-slowDone:
			t.Fatalf("a slow request answered (%s) before %d creates and deletes on another runtime were through", done, i+1)
		default:
		}
	}
	for i := 0; i < 2; i++ {
		if done := <-slowDone; !strings.Contains(done, " 20") {
			t.Fatalf("the slow request failed: %s", done)
		}
	}
}
