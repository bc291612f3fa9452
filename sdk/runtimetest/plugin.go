package runtimetest

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// PluginInstance is a runtime plugin executable launched with sdk.Launch,
// as the host launches it. LaunchPlugin returns one.
type PluginInstance struct {
	t      testing.TB
	path   string
	plugin *sdk.Plugin
	// pid is taken right after the handshake, while the plugin is known to
	// be alive and not yet reaped, so Kill cannot hit a recycled PID.
	pid  int
	once sync.Once
}

// LaunchPlugin starts the plugin executable at path with env added to its
// environment, and closes it when t ends. The plugin's log goes to t's log.
// It fails t if the plugin does not start.
func LaunchPlugin(t testing.TB, path string, env []string) Instance {
	t.Helper()
	return LaunchCommand(t, []string{path}, env)
}

// LaunchCommand is LaunchPlugin for an executable that serves the plugin
// when given arguments: argv[0] is its path, the rest its arguments (as in
// "task-executor plugin process").
func LaunchCommand(t testing.TB, argv []string, env []string) Instance {
	t.Helper()
	path := argv[0]
	// Registered before the plugin's Close so that it runs after it: the
	// plugin's last words are still logged, and nothing is logged to t
	// once t has ended.
	w := &testLogWriter{t: t}
	t.Cleanup(w.close)
	level := hclog.LevelFromString(os.Getenv(sdk.EnvLogLevel))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: filepath.Base(path), Output: w, Level: level})
	// A generous handshake: tests run beside others that load the machine.
	p, err := sdk.Launch(path, sdk.LaunchOptions{Logger: logger, Env: env, Args: argv[1:], StartTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("cannot launch plugin %s: %v", path, err)
	}
	inst := &PluginInstance{t: t, path: path, plugin: p, pid: p.Pid()}
	t.Cleanup(inst.Close)
	if inst.pid <= 0 {
		t.Fatalf("plugin %s started but its PID is unknown; Kill could not simulate a crash", path)
	}
	return inst
}

// Runtime returns the plugin's runtime, backed by gRPC.
func (p *PluginInstance) Runtime() sdk.Runtime { return p.plugin.Runtime }

// Plugin returns the underlying plugin handle.
func (p *PluginInstance) Plugin() *sdk.Plugin { return p.plugin }

// Pid returns the plugin's process ID.
func (p *PluginInstance) Pid() int { return p.pid }

// Kill sends SIGKILL to the plugin's process, then lets sdk.Plugin reap it
// and release the connection.
func (p *PluginInstance) Kill() {
	p.t.Helper()
	killed := false
	p.once.Do(func() {
		killed = true
		// Only a plugin not yet reaped is signalled: once go-plugin has
		// waited for it, its PID may name an unrelated process.
		if !p.plugin.Exited() {
			if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				p.t.Errorf("cannot SIGKILL plugin %s (pid %d): %v", p.path, p.pid, err)
			}
		}
		p.plugin.Kill()
	})
	if !killed {
		p.t.Errorf("plugin %s (pid %d) was already closed or killed", p.path, p.pid)
		return
	}
	if !p.plugin.Exited() {
		p.t.Errorf("plugin %s (pid %d) still runs after SIGKILL", p.path, p.pid)
	}
}

// Close asks the plugin to exit and kills it if it does not. Tasks it
// started keep running.
func (p *PluginInstance) Close() {
	p.once.Do(p.plugin.Kill)
}

// testLogWriter forwards a plugin's log to the test's log while the test
// runs: testing panics on a Log call after the test has ended, and the
// plugin's log reader may still be draining then.
type testLogWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
}

func (w *testLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testLogWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}

// ShellSpec is Harness.Spec for the process flavour: `sh -c script`.
func ShellSpec(script string, opts SpecOptions) sdk.TaskSpec {
	p := &sdk.ProcessSpec{
		Command:    []string{"sh", "-c", script},
		Env:        opts.Env,
		WorkingDir: opts.WorkingDir,
	}
	if opts.TimeoutSeconds > 0 {
		timeout := opts.TimeoutSeconds
		p.TimeoutSeconds = &timeout
	}
	return sdk.TaskSpec{Process: p}
}

// MissingCommandName is a command no PATH holds; MissingCommandSpec runs it.
const MissingCommandName = "task-executor-conformance-no-such-command"

// MissingCommandSpec is Harness.StartErrorSpec for the process flavour: a
// process spec whose command does not exist.
func MissingCommandSpec() sdk.TaskSpec {
	return sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{MissingCommandName}}}
}

// ReadTaskFiles is Harness.Output for runtimes that write a task's output to
// stdout.log and stderr.log in its directory, as the SDK asks. A file that
// does not exist (yet) counts as empty.
func ReadTaskFiles(t *testing.T, task sdk.Task) string {
	t.Helper()
	var out bytes.Buffer
	for _, name := range []string{sdk.StdoutLog, sdk.StderrLog} {
		b, err := os.ReadFile(filepath.Join(task.Dir, name))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("cannot read the output of task %s: %v", task.Name, err)
		}
		out.Write(b)
		// Keeps the last line of stdout and the first of stderr apart when
		// stdout does not end in a newline.
		if len(b) > 0 && b[len(b)-1] != '\n' {
			out.WriteByte('\n')
		}
	}
	return out.String()
}
