package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/internal/testbin"
)

// examplePluginHost starts a host whose plugin directory holds the example
// retry plugin (examples/plugins/retry), built from source as a third party
// would build it, beside the built-in runtimes.
func examplePluginHost(t *testing.T, args ...string) *hostProc {
	t.Helper()
	dir := pluginDir(t, "retry", "./examples/plugins/retry")
	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, args: args}
	h.start()
	t.Cleanup(h.cleanup)
	// Registered after h.cleanup, so it runs before: the supervisors are
	// found while the data directory is still there.
	t.Cleanup(func() { killRetrySupervisors(h.dataDir) })
	return h
}

// killRetrySupervisors kills, by PID, the retry supervisors of dataDir's
// tasks that still run, and their tasks' process groups. A PID counts only
// if its command line is that task's supervisor, so a recycled PID is
// never hit.
func killRetrySupervisors(dataDir string) {
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		dir := filepath.Join(dataDir, e.Name())
		var rec struct {
			SupervisorPID int `json:"supervisorPid"`
			Attempts      []struct {
				PID int `json:"pid"`
			} `json:"attempts"`
		}
		b, err := os.ReadFile(filepath.Join(dir, "retry-status.json"))
		if err != nil || json.Unmarshal(b, &rec) != nil || rec.SupervisorPID <= 0 {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", rec.SupervisorPID))
		if !strings.HasSuffix(string(cmdline), "\x00supervise\x00"+dir+"\x00") {
			continue
		}
		if n := len(rec.Attempts); n > 0 {
			_ = syscall.Kill(-rec.Attempts[n-1].PID, syscall.SIGKILL)
		}
		_ = syscall.Kill(rec.SupervisorPID, syscall.SIGKILL)
	}
}

// retryTask is a process task for the retry runtime, its policy in its
// runtime options.
func retryTask(name, script string, opts map[string]string) map[string]any {
	return map[string]any{"name": name, "spec": map[string]any{
		"runtime":        "retry",
		"process":        map[string]any{"command": []string{"sh", "-c", script}},
		"runtimeOptions": opts,
	}}
}

// TestExamplePluginRetries runs tasks on the example plugin, dropped into
// the plugin directory beside the built-in runtimes, over the real HTTP API.
func TestExamplePluginRetries(t *testing.T) {
	h := examplePluginHost(t)

	var rts []api.Runtime
	if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rts {
		if r.Name == "retry" {
			found = r.Healthy && r.PluginPath == filepath.Join(h.pluginDir, "retry") && r.PluginVersion != "" &&
				len(r.Kinds) == 1 && r.Kinds[0] == "process" && r.RuntimeOptions
			if !found {
				t.Errorf("runtime retry: %+v", r)
			}
		}
	}
	if !found {
		t.Fatalf("GET /runtimes lacks a healthy retry runtime: %+v", rts)
	}

	// Fails twice, then succeeds: one task, three attempts.
	h.mustDo(201, "POST", "/tasks", retryTask("flaky",
		`echo "attempt $RETRY_ATTEMPT"; [ "$RETRY_ATTEMPT" -ge 3 ] || exit 75`,
		map[string]string{"maxAttempts": "5", "backoff": "20ms"}))
	term := h.waitTerminated("flaky", 30*time.Second).Status.State.Terminated
	if term.ExitCode != 0 || term.Reason != "Succeeded" || term.Message != "succeeded on attempt 3 of 5" {
		t.Errorf("flaky terminated with exitCode %d, reason %q, message %q; want 0, Succeeded, \"succeeded on attempt 3 of 5\"",
			term.ExitCode, term.Reason, term.Message)
	}
	if out := string(h.mustDo(200, "GET", "/tasks/flaky/logs?stream=stdout", nil)); out != "attempt 1\nattempt 2\nattempt 3\n" {
		t.Errorf("flaky's stdout through the API is %q", out)
	}

	// Always fails: the last attempt's exit code, and every one of them in
	// the message.
	h.mustDo(201, "POST", "/tasks", retryTask("hopeless", `exit $((RETRY_ATTEMPT + 1))`,
		map[string]string{"maxAttempts": "2", "backoff": "0s"}))
	term = h.waitTerminated("hopeless", 30*time.Second).Status.State.Terminated
	if term.ExitCode != 3 || term.Reason != "Failed" || term.Message != "failed 2 of 2 attempts (exit codes 2, 3)" {
		t.Errorf("hopeless terminated with exitCode %d, reason %q, message %q", term.ExitCode, term.Reason, term.Message)
	}

	// The runtime's Validate answers for it: a bad policy, or an option it
	// does not know, is a 400 and creates nothing; so are options for a
	// runtime that takes none, and keys that are not qualified names.
	refused := []struct {
		name string
		task map[string]any
		says string
	}{
		{"bad-policy", retryTask("bad-policy", "true", map[string]string{"maxAttempts": "zero"}), "maxAttempts"},
		{"unknown-option", retryTask("unknown-option", "true", map[string]string{"retries": "3"}), `runtime option \"retries\"`},
		{"options-for-process", map[string]any{"name": "options-for-process", "spec": map[string]any{
			"process": map[string]any{"command": []string{"true"}}, "runtimeOptions": map[string]string{"maxAttempts": "2"}}},
			`runtime \"process\" takes no runtime options`},
		{"bad-key", retryTask("bad-key", "true", map[string]string{"max attempts": "2"}), "spec.runtimeOptions key"},
	}
	for _, r := range refused {
		code, body := h.do("POST", "/tasks", r.task)
		if code != 400 || !strings.Contains(string(body), r.says) {
			t.Errorf("%s: got %d %s; want 400 saying %s", r.name, code, body, r.says)
		}
		if _, ok := h.get(r.name); ok {
			t.Errorf("the refused task %s exists", r.name)
		}
	}

	// The options are stored with the task, and in its answer.
	var nested struct {
		Spec struct {
			RuntimeOptions map[string]string `json:"runtimeOptions"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(h.mustDo(200, "GET", "/tasks/flaky", nil), &nested); err != nil || nested.Spec.RuntimeOptions["maxAttempts"] != "5" {
		t.Errorf("GET flaky: runtime options %v (%v), want maxAttempts 5", nested.Spec.RuntimeOptions, err)
	}

	h.mustDo(204, "DELETE", "/tasks/flaky", nil)
	eventually(t, 15*time.Second, func() bool { _, ok := h.get("flaky"); return !ok },
		func() string { return "flaky was never deleted" })
}

// TestRuntimeOptionsCompatFormat: the compatibility format ({"name",
// "process"}), which names no runtime, carries runtime options beside
// process, to the operator's default runtime; they come back in the same
// place, and a task sent back as read is the same task.
func TestRuntimeOptionsCompatFormat(t *testing.T) {
	h := examplePluginHost(t, "--default-runtime", "process=retry")
	task := map[string]any{"name": "compat", "process": map[string]any{"command": []string{"sh", "-c", `echo "attempt $RETRY_ATTEMPT"; exit 7`}},
		"runtimeOptions": map[string]string{"maxAttempts": "2", "backoff": "0s"}}
	h.mustDo(201, "POST", "/tasks", task)
	term := h.waitTerminated("compat", 30*time.Second).Status.State.Terminated
	if term.ExitCode != 7 || term.Message != "failed 2 of 2 attempts (exit codes 7, 7)" {
		t.Errorf("compat terminated %+v: want two attempts, exit code 7", term)
	}
	read := h.mustDo(200, "GET", "/tasks/compat", nil)
	var compat struct {
		Spec           json.RawMessage   `json:"spec"`
		RuntimeOptions map[string]string `json:"runtimeOptions"`
	}
	if err := json.Unmarshal(read, &compat); err != nil || compat.RuntimeOptions["maxAttempts"] != "2" || compat.Spec != nil {
		t.Errorf("GET compat: %s: want the options beside process, no spec", read)
	}
	// Sent back as read, in a setTasks: the same task, nothing changes.
	var back map[string]any
	if err := json.Unmarshal(read, &back); err != nil {
		t.Fatal(err)
	}
	h.mustDo(200, "POST", "/setTasks", []any{back})
	if tk, ok := h.get("compat"); !ok || tk.Status.Message != "" {
		t.Errorf("after sending the task back: %+v", tk)
	}
	// Beside a spec, the top-level options are a 400.
	code, body := h.do("POST", "/tasks", map[string]any{"name": "both", "spec": map[string]any{"process": map[string]any{"command": []string{"true"}}},
		"runtimeOptions": map[string]string{"maxAttempts": "2"}})
	if code != 400 || !strings.Contains(string(body), "spec.runtimeOptions") {
		t.Errorf("options beside spec: %d %s, want 400", code, body)
	}
}

// TestExamplePluginSurvivesItsCrash: the example plugin is killed while a
// task runs; the host restarts it, the new plugin process adopts the task,
// and its exit code arrives.
func TestExamplePluginSurvivesItsCrash(t *testing.T) {
	h := examplePluginHost(t)
	gate := filepath.Join(t.TempDir(), "gate")
	h.mustDo(201, "POST", "/tasks", retryTask("survivor",
		fmt.Sprintf(`echo waiting; while [ ! -e %s ]; do sleep 0.05; done; exit 4`, gate),
		map[string]string{"maxAttempts": "1"}))
	eventually(t, 15*time.Second, func() bool {
		tk, ok := h.get("survivor")
		return ok && tk.Status.State.Running != nil
	}, func() string { return "survivor never ran" })

	old := h.pluginPIDOf("retry")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var rts []api.Runtime
	eventually(t, 15*time.Second, func() bool {
		if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
			t.Fatal(err)
		}
		for _, r := range rts {
			if r.Name == "retry" {
				return r.Healthy && r.Restarts == 1
			}
		}
		return false
	}, func() string { return fmt.Sprintf("the retry plugin was not restarted: %+v", rts) })
	if tk, _ := h.get("survivor"); tk.Status.State.Running == nil {
		t.Errorf("after the plugin's restart survivor is %+v; want still running", tk.Status.State)
	}

	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	term := h.waitTerminated("survivor", 15*time.Second).Status.State.Terminated
	if term.ExitCode != 4 || term.Reason != "Failed" {
		t.Errorf("survivor terminated with exitCode %d, reason %q; want 4, Failed", term.ExitCode, term.Reason)
	}
}

// pluginDir builds the plugin in package pkg (a path from the module's
// root) as a third party would, into a new plugin directory as name, and
// returns the directory.
func pluginDir(t *testing.T, name, pkg string) string {
	t.Helper()
	root, err := testbin.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	// The host refuses plugins others may write to, which a umask of 002
	// would make.
	if err := os.Chmod(filepath.Join(dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
