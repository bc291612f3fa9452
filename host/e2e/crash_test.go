package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// crashTasks creates n tasks that end at staggered times with varied exit
// codes, each recording every run in runs/, and waits until all run.
func crashTasks(t *testing.T, h *hostProc, n int) (want map[string]int32, runs string) {
	t.Helper()
	runs = t.TempDir()
	want = map[string]int32{}
	var tasks []any
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("crash-%02d", i)
		code := int32(i % 7)
		// Durations from 0.6s to 5.5s: some tasks end while the host (or
		// plugin) is down, some after it is back.
		delay := 0.6 + float64(i%50)*0.1
		want[name] = code
		tasks = append(tasks, shTask(name, fmt.Sprintf("echo x >> %s/%s; sleep %.1f; exit %d", runs, name, delay, code)))
	}
	h.mustDo(200, "POST", "/setTasks", tasks)
	eventually(t, 30*time.Second, func() bool {
		for _, tk := range h.list() {
			if tk.Status.State.Running == nil && tk.Status.State.Terminated == nil {
				return false
			}
		}
		return true
	}, func() string { return "not all tasks started" })
	return want, runs
}

// exitsRecorded counts the tasks whose shim has recorded an exit.
func exitsRecorded(dataDir string) int {
	m, _ := filepath.Glob(filepath.Join(dataDir, "*", "shim-exit.json"))
	return len(m)
}

// checkOutcome waits until every task has terminated and checks its exit
// code, and that each ran exactly once.
func checkOutcome(t *testing.T, h *hostProc, want map[string]int32, runs string) {
	t.Helper()
	eventually(t, 60*time.Second, func() bool {
		ts := h.list()
		if len(ts) != len(want) {
			t.Fatalf("%d tasks listed after the crash, want %d", len(ts), len(want))
		}
		for _, tk := range ts {
			if tk.Status.State.Terminated == nil {
				return false
			}
		}
		return true
	}, func() string { return "not every task terminated after the crash" })
	for _, tk := range h.list() {
		term := tk.Status.State.Terminated
		code, ok := want[tk.Name]
		wantReason := "Failed"
		if code == 0 {
			wantReason = "Succeeded"
		}
		if !ok || term.ExitCode != code || term.Reason != wantReason {
			t.Errorf("task %s: exit %d %s (%s), want %d %s", tk.Name, term.ExitCode, term.Reason, term.Message, code, wantReason)
		}
		b, err := os.ReadFile(filepath.Join(runs, tk.Name))
		if err != nil || strings.Count(string(b), "x") != 1 {
			t.Errorf("task %s ran %d times, want once (%v)", tk.Name, strings.Count(string(b), "x"), err)
		}
	}
}

func TestHostKilledMidFlight(t *testing.T) {
	h := startHost(t)
	want, runs := crashTasks(t, h, 50)
	plugin := h.pluginPID()
	h.kill9()
	// The plugin follows its host; the tasks do not.
	eventually(t, 10*time.Second, func() bool { return !alive(plugin) },
		func() string { return "the plugin outlived its killed host" })
	eventually(t, 30*time.Second, func() bool { return exitsRecorded(h.dataDir) >= 15 },
		func() string { return "tasks did not finish while the host was down" })
	down := exitsRecorded(h.dataDir)
	if down == len(want) {
		t.Fatal("every task finished while the host was down; none was in flight at the restart")
	}
	t.Logf("%d of %d tasks finished while the host was down", down, len(want))
	h.restart()
	checkOutcome(t, h, want, runs)
}

func TestPluginKilledMidFlight(t *testing.T) {
	h := &hostProc{t: t, dataDir: dataDir(t)}
	h.privateExecutable()
	h.start()
	t.Cleanup(h.cleanup)
	want, runs := crashTasks(t, h, 50)
	var shims []shimState
	for name := range want {
		shims = append(shims, h.shimState(name))
	}
	plugin := h.pluginPID()
	// Take the plugin away (the host's own executable, which serves it) so
	// the host cannot restart it at once: tasks must end while no plugin
	// watches them.
	exe := h.executable()
	if err := os.Rename(exe, exe+".away"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The host is the child subreaper of its plugins: the orphaned shims
	// become its children (and so it can reap them), not PID 1's.
	eventually(t, 3*time.Second, func() bool {
		running, adopted := 0, 0
		for _, st := range shims {
			if procStart(st.ShimPID) == st.ShimStart && alive(st.ShimPID) {
				running++
				if procPPID(st.ShimPID) == h.cmd.Process.Pid {
					adopted++
				}
			}
		}
		return running > 0 && adopted == running
	}, func() string { return "the killed plugin's shims were not handed to the host" })
	eventually(t, 30*time.Second, func() bool { return exitsRecorded(h.dataDir) >= 15 },
		func() string { return "tasks did not finish while the plugin was down" })
	down := exitsRecorded(h.dataDir)
	if down == len(want) {
		t.Fatal("every task finished while the plugin was down; none was in flight at its restart")
	}
	t.Logf("%d of %d tasks finished while the plugin was down", down, len(want))
	if err := os.Rename(exe+".away", exe); err != nil {
		t.Fatal(err)
	}
	checkOutcome(t, h, want, runs)
	newPlugin := h.pluginPID()
	if newPlugin == plugin {
		t.Fatal("the plugin was not restarted")
	}
	// The dead plugin's shims were handed to the host when it died; once
	// they end, the host must reap them: none may linger as a zombie.
	eventually(t, 10*time.Second, func() bool {
		for _, st := range shims {
			if procStart(st.ShimPID) == st.ShimStart {
				return false
			}
		}
		return true
	}, func() string {
		var left []int
		for _, st := range shims {
			if procStart(st.ShimPID) == st.ShimStart {
				left = append(left, st.ShimPID)
			}
		}
		return fmt.Sprintf("shims of the killed plugin linger (zombies nobody reaped): %v", left)
	})
}

// TestDataDirInUse: a second executor on a data directory in use refuses to
// start, says why and changes nothing; once the first is killed (-9), the
// directory is free again and the next host finds the task.
func TestDataDirInUse(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", processTask("kept", "sleep", "60"))
	h.shimState("kept")
	before := tasksOnDisk(t, h.dataDir)

	second := exec.Command(filepath.Join(binDir, "task-executor"),
		"--listen-addr", "127.0.0.1:0", "--data-dir", h.dataDir)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = second.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = second.Process.Kill()
		<-done
		t.Fatal("a second host on the same data directory kept running")
	}
	if err == nil || !strings.Contains(string(out), "in use by another task-executor") {
		t.Fatalf("second host: %v: %s; want a refusal that says the data directory is in use", err, out)
	}
	if after := tasksOnDisk(t, h.dataDir); after != before {
		t.Fatalf("the refused host changed the data directory:\nbefore %s\nafter  %s", before, after)
	}
	if tk, _ := h.get("kept"); tk.Status.State.Running == nil {
		t.Fatalf("the first host's task is %+v, want running", tk.Status.State)
	}

	h.kill9()
	h.restart()
	// Asked at once: the host serves only once its runtimes have said
	// what became of their tasks, so a running task never shows as
	// waiting again.
	if tk, ok := h.get("kept"); !ok || tk.Status.State.Running == nil {
		t.Fatalf("after the first host was killed, the next one has %+v, %v; want kept running", tk, ok)
	}
}

// TestPluginSocketsCleanedUp: the plugins' gRPC sockets live in a directory
// of the host's own. A plugin killed with -9 leaves no socket behind once
// the host has restarted it; the plugins of a host killed with -9 leave
// theirs only until the next host on the data directory starts; a host
// that stops cleanly leaves nothing.
func TestPluginSocketsCleanedUp(t *testing.T) {
	h := startHost(t)
	dir := h.socketDir()
	if dir == "" {
		t.Fatalf("the host names no directory for plugin sockets:\n%s", h.logs.String())
	}
	sockets := func() map[string]bool {
		out := map[string]bool{}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			out[e.Name()] = true
		}
		return out
	}
	plugins := func() int {
		n := 0
		for _, c := range children(h.cmd.Process.Pid) {
			if pluginName(c) != "" {
				n++
			}
		}
		return n
	}
	oneEach := func(what string) map[string]bool {
		t.Helper()
		var got map[string]bool
		eventually(t, 10*time.Second, func() bool {
			got = sockets()
			return len(got) > 0 && len(got) == plugins()
		}, func() string {
			return fmt.Sprintf("%s: %d sockets in %s for %d plugins: %v", what, len(sockets()), dir, plugins(), sockets())
		})
		return got
	}
	oneEach("at the start")

	old := h.pluginNow("process")
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { p := h.pluginNow("process"); return p != 0 && p != old },
		func() string { return "the killed plugin was not restarted" })
	before := oneEach("after a plugin was killed")

	h.kill9()
	h.restart()
	for name := range oneEach("after the host was killed and started again") {
		if before[name] {
			t.Errorf("socket %s of a plugin of the killed host is still there", name)
		}
	}

	h.stop()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a clean stop, %s is still there (%v): %v", dir, err, sockets())
	}
}
