package e2e

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestBwrapPlugin runs tasks through the host on the example bwrap runtime
// (examples/plugins/bwrap), built as a third party would build it and made
// the default for process tasks: each task cannot write /usr, sees only
// loopback unless its runtime option network=on, and sees no other task's
// directory; a bad option value is a 400 at create time.
func TestBwrapPlugin(t *testing.T) {
	dir := pluginDir(t, "bwrap", "./examples/plugins/bwrap")
	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, args: []string{"--default-runtime", "process=bwrap"}}
	h.start()
	t.Cleanup(h.cleanup)
	run := func(name, script string, opts map[string]string) string {
		t.Helper()
		task := shTask(name, script)
		if opts != nil {
			task["spec"].(map[string]any)["runtimeOptions"] = opts
		}
		h.mustDo(201, "POST", "/tasks", task)
		h.waitTerminated(name, 30*time.Second)
		return string(h.mustDo(200, "GET", "/tasks/"+name+"/logs", nil))
	}
	if out := run("usr", "touch /usr/bwrap-e2e && echo wrote", nil); strings.Contains(out, "wrote") || !strings.Contains(out, "Read-only file system") {
		t.Errorf("writing /usr: %q, want a read-only file system", out)
	}
	hostDev, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	if out := run("net-off", "tail -n +3 /proc/net/dev", nil); strings.Count(out, ":") != 1 || !strings.Contains(out, "lo:") {
		t.Errorf("interfaces without the network: %q, want only lo", out)
	}
	if out := run("net-on", "tail -n +3 /proc/net/dev", map[string]string{"network": "on"}); strings.Count(out, ":") != strings.Count(string(hostDev), ":") {
		t.Errorf("interfaces with network=on: %q, want the host's %q", out, hostDev)
	}
	if out := run("peek", "ls -A "+h.dataDir, nil); out != "peek\n" {
		t.Errorf("the data directory as a task sees it: %q, want its own directory alone", out)
	}
	code, body := h.do("POST", "/tasks", map[string]any{"name": "bad-option", "spec": map[string]any{
		"process": map[string]any{"command": []string{"true"}}, "runtimeOptions": map[string]string{"network": "maybe"}}})
	if code != 400 || !strings.Contains(string(body), "network") {
		t.Errorf("network=maybe: %d %s, want 400", code, body)
	}
	if _, ok := h.get("bad-option"); ok {
		t.Error("the refused task exists")
	}
}
