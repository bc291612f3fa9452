package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/internal/testbin"
)

// TestBwrapPlugin runs tasks through the host on the example bwrap runtime
// (examples/plugins/bwrap), built as a third party would build it, in a
// module of its own that requires the SDK module alone, and made the
// default for process tasks: each task cannot write /usr, sees only
// loopback unless its runtime option network=on, and sees no other task's
// directory; a bad option value is a 400 at create time.
func TestBwrapPlugin(t *testing.T) {
	dir := outOfTreePlugin(t, "bwrap", "examples/plugins/bwrap")
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

// outOfTreePlugin builds the plugin whose sources are in src (a directory
// of this repository) as an outside author would: copied into a module of
// its own that requires the SDK module and nothing of the executor's (the
// SDK is found in this tree by a replace, as a published version would be
// found by the proxy). It returns a plugin directory holding it as name.
func outOfTreePlugin(t *testing.T, name, src string) string {
	t.Helper()
	root, err := testbin.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	files, err := filepath.Glob(filepath.Join(root, src, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mod, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gomod := fmt.Sprintf("module example.com/%s\n\ngo 1.26.0\n\nrequire %s v0.0.0\n\nreplace %s => %s\n",
		name, sdkModule, sdkModule, filepath.Join(root, "sdk"))
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "plugins")
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", filepath.Join(dir, name), "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = mod
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s in the plugin's module: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(mod, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ReplaceAll(string(b), sdkModule, ""), "opensandbox/task-executor") {
		t.Fatalf("the plugin's module needs more of the executor than the SDK:\n%s", b)
	}
	// The host refuses plugins others may write to, which a umask of 002
	// would make.
	if err := os.Chmod(filepath.Join(dir, name), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sdkModule is the SDK's module path.
const sdkModule = "github.com/opensandbox/task-executor/sdk"
