package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
)

// TestUpstreamRecipe: upstream's install recipe, unchanged. The executable
// alone is copied into an empty directory and run with upstream's
// single-dash flags, its data directory and $TMPDIR on a file system
// mounted noexec: a process task and a sidecar task run, each built-in
// runtime is a process of its own, and a kill -9 and restart of the host
// loses nothing.
func TestUpstreamRecipe(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "opt", "opensandbox", "task-executor")
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(binDir, "task-executor"))
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(exe)); len(entries) != 1 {
		t.Fatalf("the executor's directory holds %d files, want the executable alone", len(entries))
	}
	noexec := smallDisk(t, "64m")
	if out, err := exec.Command("mount", "-o", "remount,noexec", noexec).CombinedOutput(); err != nil {
		t.Fatalf("remount noexec: %v: %s", err, out)
	}
	tmp := filepath.Join(noexec, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	// The serving line in JSON is how the harness learns the port; the
	// environment, not a flag, so the command line stays upstream's.
	env := []string{"LOG_FORMAT=json", "TMPDIR=" + tmp, "TASK_EXECUTOR_SHIM="}

	t.Run("process", func(t *testing.T) {
		data := filepath.Join(noexec, "process")
		h := &hostProc{t: t, exe: exe, dataDir: data, env: env,
			argv: []string{"-listen-addr=127.0.0.1:0", "-data-dir=" + data}}
		h.start()
		t.Cleanup(h.cleanup)
		checkBuiltinProcess(t, h, exe, "process")

		h.mustDo(201, "POST", "/tasks", shTask("quick", "echo from one binary"))
		if term := h.waitTerminated("quick", 10*time.Second).Status.State.Terminated; term.ExitCode != 0 || term.Reason != "Succeeded" {
			t.Fatalf("quick: %+v", term)
		}
		if out, _ := os.ReadFile(filepath.Join(data, "quick", sdk.StdoutLog)); string(out) != "from one binary\n" {
			t.Fatalf("quick's output: %q", out)
		}

		h.mustDo(201, "POST", "/tasks", shTask("survivor", "echo started; sleep 1.5; exit 7"))
		eventually(t, 10*time.Second, func() bool {
			tk, _ := h.get("survivor")
			return tk.Status.State.Running != nil
		}, func() string { return "survivor never ran" })
		old := h.pluginPID()
		h.kill9()
		eventually(t, 10*time.Second, func() bool { return !alive(old) },
			func() string { return "the built-in runtime's process outlived its host" })
		h.restart()
		term := h.waitTerminated("survivor", 20*time.Second).Status.State.Terminated
		if term.ExitCode != 7 {
			t.Fatalf("after a kill -9 of the host: %+v, want exit 7", term)
		}
		checkBuiltinProcess(t, h, exe, "process")
	})

	t.Run("sidecar", func(t *testing.T) {
		name := fmt.Sprintf("recipe-%d", os.Getpid())
		runtimetest.StartContainer(t, "recipe-main", "SANDBOX_MAIN_CONTAINER="+name)
		data := filepath.Join(noexec, "sidecar")
		h := &hostProc{t: t, exe: exe, dataDir: data, env: env,
			argv: []string{"-listen-addr=127.0.0.1:0", "-data-dir=" + data, "-enable-sidecar-mode=true", "-main-container-name=" + name}}
		h.start()
		t.Cleanup(h.cleanup)
		checkBuiltinProcess(t, h, exe, "nsenter")

		h.mustDo(201, "POST", "/tasks", shTask("in-main", "hostname"))
		if term := h.waitTerminated("in-main", 10*time.Second).Status.State.Terminated; term.ExitCode != 0 {
			t.Fatalf("in-main: %+v", term)
		}
		if out, _ := os.ReadFile(filepath.Join(data, "in-main", sdk.StdoutLog)); strings.TrimSpace(string(out)) != "recipe-main" {
			t.Fatalf("stdout %q: the task did not run in the main container", out)
		}
	})
}

// checkBuiltinProcess fails t unless the host runs the built-in runtime
// name as a child process of its own, from its own executable, as ps shows
// it: "EXE plugin NAME".
func checkBuiltinProcess(t *testing.T, h *hostProc, exe, name string) {
	t.Helper()
	pid := h.pluginPIDOf(name)
	if pid == h.cmd.Process.Pid {
		t.Fatalf("the %s runtime runs in the host's process", name)
	}
	out, err := exec.Command("ps", "-o", "args=", "-p", fmt.Sprint(pid)).Output()
	if err != nil {
		t.Fatalf("ps -p %d: %v", pid, err)
	}
	if got, want := strings.TrimSpace(string(out)), exe+" plugin "+name; got != want {
		t.Fatalf("ps shows the %s runtime as %q, want %q", name, got, want)
	}
}

// TestPluginDirReplacesBuiltin: a plugin in --plugin-dir replaces the
// built-in runtime of the same name, whether its file bears that name or it
// reports it; tasks run on it, and the built-in is not started.
func TestPluginDirReplacesBuiltin(t *testing.T) {
	for _, file := range []string{"process", "my-process"} {
		t.Run(file, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "plugins")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, file), builtinPluginFile("process"), 0o755); err != nil {
				t.Fatal(err)
			}
			h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir}
			h.start()
			t.Cleanup(h.cleanup)
			var rts []api.Runtime
			if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
				t.Fatal(err)
			}
			if len(rts) != 1 || rts[0].Name != "process" || rts[0].Builtin || rts[0].PluginPath != filepath.Join(dir, file) || !rts[0].Healthy {
				t.Fatalf("GET /runtimes: %+v; want the plugin directory's process runtime alone", rts)
			}
			if n := len(children(h.cmd.Process.Pid)); n != 1 {
				t.Fatalf("the host has %d children, want the one plugin", n)
			}
			h.mustDo(201, "POST", "/tasks", shTask("on-plugin", "exit 3"))
			if term := h.waitTerminated("on-plugin", 10*time.Second).Status.State.Terminated; term.ExitCode != 3 {
				t.Fatalf("on-plugin: %+v, want exit 3", term)
			}
		})
	}
}
