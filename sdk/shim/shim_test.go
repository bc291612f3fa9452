package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shimBin is the task-executor-shim executable built for this test run.
var shimBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "shim-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shimBin = filepath.Join(dir, "task-executor-shim")
	if err := Build(context.Background(), shimBin); err != nil {
		fmt.Fprintf(os.Stderr, "building the shim: %v\n", err)
		return 1
	}
	return m.Run()
}

// patience bounds every wait in these tests; only a broken shim needs it.
const patience = 15 * time.Second

// proc is what these tests read from /proc/<pid>/stat.
type proc struct {
	state byte
	ppid  int
	pgrp  int
	sid   int
	start uint64
}

func readProc(pid int) (proc, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return proc{}, fmt.Errorf("short /proc/%d/stat: %q", pid, s)
	}
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return proc{}, err
	}
	return proc{
		state: f[0][0], ppid: atoi(f[1]), pgrp: atoi(f[2]), sid: atoi(f[3]),
		start: start,
	}, nil
}

// running reports whether pid still names the process that started at
// start and has not exited. A zombie has exited: an orphaned task's zombie
// lingers until init gets round to reaping it, so it must not count.
func running(pid int, start uint64) bool {
	p, err := readProc(pid)
	return err == nil && p.start == start && p.state != 'Z' && p.state != 'X'
}

func mustStart(t *testing.T, pid int) uint64 {
	t.Helper()
	p, err := readProc(pid)
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	return p.start
}

// eventually polls cond until it holds, failing the test after patience.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lockHeld probes the state directory's lock the way a restarted plugin
// would, without relying on the package's own helper.
func lockHeld(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// holders lists the processes that have path open.
func holders(path string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if sameFileAs(fdPath(pid, fd.Name()), path) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// sessionMembers lists the live processes in the session led by sid that
// started no earlier than start: a shim and everything it spawned. The start
// bound keeps a recycled session ID from naming someone else's processes.
func sessionMembers(sid int, start uint64) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil || p.sid != sid || p.start < start || p.state == 'Z' || p.state == 'X' {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// task is one task's directories and files: root is its directory (and the
// default working directory), dir the shim's state directory inside it.
type task struct {
	t              *testing.T
	root, dir      string
	stdout, stderr string

	mu     sync.Mutex
	states []State // every State a Launch returned, for the cleanup
}

func newTask(t *testing.T) *task {
	root := t.TempDir()
	k := &task{
		t: t, root: root, dir: filepath.Join(root, "shim"),
		stdout: filepath.Join(root, "stdout.log"), stderr: filepath.Join(root, "stderr.log"),
	}
	t.Cleanup(k.cleanup)
	return k
}

func (k *task) path(name string) string { return filepath.Join(k.root, name) }

func (k *task) spec(argv ...string) Spec {
	return Spec{
		Argv: argv, Env: []string{"PATH=/usr/bin:/bin"},
		Stdout: k.stdout, Stderr: k.stderr, Grace: 5 * time.Second,
	}
}

// sh is a spec running script with /bin/sh in the task's directory.
func (k *task) sh(script string) Spec { return k.spec("/bin/sh", "-c", script) }

func (k *task) launch(spec Spec) Result {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(k.t.Context(), patience)
	defer cancel()
	res, err := Launch(ctx, shimBin, k.dir, spec)
	if err != nil {
		k.t.Fatalf("Launch: %v", err)
	}
	if (res.State == nil) == (res.Exit == nil) {
		k.t.Fatalf("Launch returned %+v: want exactly one of State and Exit", res)
	}
	if res.State != nil {
		k.mu.Lock()
		k.states = append(k.states, *res.State)
		k.mu.Unlock()
	}
	return res
}

// started launches spec and fails unless the task runs.
func (k *task) started(spec Spec) State {
	k.t.Helper()
	res := k.launch(spec)
	if res.State == nil {
		k.t.Fatalf("task did not start: %+v", *res.Exit)
	}
	return *res.State
}

func (k *task) wait(st State) Exit {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(k.t.Context(), patience)
	defer cancel()
	exit, err := Wait(ctx, k.dir, st)
	if err != nil {
		k.t.Fatalf("Wait: %v", err)
	}
	return exit
}

func (k *task) stop(grace time.Duration) {
	k.t.Helper()
	if err := Stop(k.dir, grace); err != nil {
		k.t.Fatalf("Stop: %v", err)
	}
}

func (k *task) waitFile(name string) string {
	k.t.Helper()
	var b []byte
	eventually(k.t, name+" is written", func() bool {
		var err error
		b, err = os.ReadFile(k.path(name))
		return err == nil && len(b) > 0 && b[len(b)-1] == '\n'
	})
	return strings.TrimSpace(string(b))
}

func (k *task) touch(name string) {
	k.t.Helper()
	if err := os.WriteFile(k.path(name), nil, 0o600); err != nil {
		k.t.Fatal(err)
	}
}

// cleanup kills, by PID, every process any shim of this task started,
// including the shims, and checks that they are gone, so no test leaves a
// process behind.
func (k *task) cleanup() {
	k.mu.Lock()
	states := slices.Clone(k.states)
	k.mu.Unlock()
	var st State
	if readJSON(k.dir, stateFile, &st) == nil {
		states = append(states, st)
	}
	for _, st := range states {
		deadline := time.Now().Add(patience)
		for {
			pids := sessionMembers(st.ShimPID, st.ShimStart)
			if len(pids) == 0 {
				break
			}
			if time.Now().After(deadline) {
				k.t.Errorf("processes of shim %d survive SIGKILL: %v", st.ShimPID, pids)
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// A shim that reported a start error has no state.json; it exits on its
	// own, which the lock shows.
	deadline := time.Now().Add(patience)
	for lockHeld(k.dir) {
		if time.Now().After(deadline) {
			k.t.Errorf("the lock in %s is still held, by PIDs %v", k.dir, holders(k.dir))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sameExit(a, b Exit) bool {
	return a.ExitCode == b.ExitCode && a.Signal == b.Signal && a.Reason == b.Reason &&
		a.Message == b.Message && a.StartedAt.Equal(b.StartedAt) && a.FinishedAt.Equal(b.FinishedAt)
}

func sameState(a, b State) bool {
	return a.ShimPID == b.ShimPID && a.ShimStart == b.ShimStart && a.PID == b.PID &&
		a.PIDStart == b.PIDStart && a.StartedAt.Equal(b.StartedAt)
}

func TestExitStatus(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		script string
		code   int32 // when not killed by sig
		sig    syscall.Signal
		reason string
	}{
		{"success", "exit 0", 0, 0, ReasonSucceeded},
		{"exit 3", "exit 3", 3, 0, ReasonFailed},
		{"exit 255", "exit 255", 255, 0, ReasonFailed},
		{"killed by SIGKILL", "kill -KILL $$", 0, syscall.SIGKILL, ReasonFailed},
		{"killed by SIGTERM", "kill -TERM $$", 0, syscall.SIGTERM, ReasonFailed},
		{"killed by SIGUSR1", "kill -USR1 $$", 0, syscall.SIGUSR1, ReasonFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A shell's convention, which Kubernetes follows too.
			wantCode, wantSig := tc.code, int32(tc.sig)
			if tc.sig != 0 {
				wantCode = 128 + int32(tc.sig)
			}
			k := newTask(t)
			before := time.Now()
			st := k.started(k.sh(tc.script))
			exit := k.wait(st)
			if exit.ExitCode != wantCode || exit.Signal != wantSig || exit.Reason != tc.reason {
				t.Fatalf("exit %+v, want code %d signal %d reason %s", exit, wantCode, wantSig, tc.reason)
			}
			if !exit.StartedAt.Equal(st.StartedAt) {
				t.Errorf("StartedAt %v, want the state's %v", exit.StartedAt, st.StartedAt)
			}
			// Wall clocks of two processes, compared without monotonic
			// readings: allow a little slack.
			if exit.StartedAt.Before(before.Add(-time.Second)) || exit.FinishedAt.Before(exit.StartedAt) {
				t.Errorf("implausible times: started %v, finished %v (launched at %v)", exit.StartedAt, exit.FinishedAt, before)
			}
			// What Wait returned is what is on disk for a later plugin. The
			// directory's lock can outlive the shim by a moment: a process
			// this test binary forks at the time the lock is taken (another
			// test's spare shim) holds a copy until its exec.
			var res Result
			var alive bool
			eventually(t, "Inspect to find the shim gone", func() bool {
				var err error
				res, alive, err = Inspect(t.Context(), k.dir)
				if err != nil {
					t.Fatal(err)
				}
				return !alive
			})
			if res.Exit == nil || !sameExit(*res.Exit, exit) {
				t.Fatalf("Inspect after Wait: %+v alive=%v, want %+v", res, alive, exit)
			}
		})
	}
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFile := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notExecutable := writeFile("not-executable", "#!/bin/sh\nexit 0\n", 0o644)
	noFormat := writeFile("no-format", "\x00\x01\x02 not a program\n", 0o755)
	shadowDir := filepath.Join(dir, "shadow")
	if err := os.Mkdir(shadowDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(shadowDir, "tool"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name   string
		modify func(k *task, s *Spec)
		code   int32
	}{
		{"absolute path not found", func(_ *task, s *Spec) { s.Argv = []string{"/nonexistent/program"} }, 127},
		{"not found in PATH", func(_ *task, s *Spec) { s.Argv = []string{"no-such-command-7f3c"} }, 127},
		{"empty command", func(_ *task, s *Spec) { s.Argv = nil }, 127},
		{"not executable", func(_ *task, s *Spec) { s.Argv = []string{notExecutable} }, 126},
		{"directory", func(_ *task, s *Spec) { s.Argv = []string{dir} }, 126},
		{"not an executable format", func(_ *task, s *Spec) { s.Argv = []string{noFormat} }, 126},
		{"only a non-executable match in PATH", func(_ *task, s *Spec) {
			s.Argv = []string{"tool"}
			s.Env = []string{"PATH=" + shadowDir}
		}, 126},
		{"working directory missing", func(_ *task, s *Spec) { s.Dir = "/nonexistent/dir" }, 128},
		{"working directory is a file", func(_ *task, s *Spec) { s.Dir = notExecutable }, 128},
		{"output file cannot be opened", func(_ *task, s *Spec) { s.Stdout = "/nonexistent/dir/out.log" }, 128},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			spec := k.spec("true")
			tc.modify(k, &spec)
			res := k.launch(spec)
			if res.Exit == nil {
				t.Fatalf("Launch started the task: %+v", *res.State)
			}
			e := *res.Exit
			if e.ExitCode != tc.code || e.Reason != ReasonStartError || e.Signal != 0 || e.Message == "" {
				t.Fatalf("exit %+v, want code %d, reason %s and a message", e, tc.code, ReasonStartError)
			}
			if !e.StartedAt.IsZero() || e.FinishedAt.IsZero() {
				t.Errorf("a task that never started has StartedAt %v, FinishedAt %v", e.StartedAt, e.FinishedAt)
			}
			// A restarted plugin must learn the same from disk.
			var got Result
			eventually(t, "the shim has exited", func() bool {
				var alive bool
				var err error
				got, alive, err = Inspect(t.Context(), k.dir)
				if err != nil {
					t.Fatalf("Inspect: %v", err)
				}
				return !alive
			})
			if got.Exit == nil || !sameExit(*got.Exit, e) {
				t.Fatalf("Inspect: %+v, want %+v", got, e)
			}
			if err := Stop(k.dir, 0); !errors.Is(err, ErrGone) {
				t.Fatalf("Stop after a start error: %v, want ErrGone", err)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	// A command that exists only in the task's PATH, never in the test's.
	script := "#!/bin/sh\nprintf '%s\\n' \"$GREETING\"\n"
	if err := os.WriteFile(filepath.Join(bin, "only-in-task-path"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// Earlier in PATH but not executable: the lookup must go past it.
	shadow := t.TempDir()
	if err := os.WriteFile(filepath.Join(shadow, "only-in-task-path"), []byte("#!/bin/sh\necho wrong\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	workDir := t.TempDir()
	if strings.Contains(os.Getenv("PATH"), bin) {
		t.Fatal("the test's own PATH must not hold the task's bin directory")
	}

	cases := []struct {
		name   string
		modify func(k *task, s *Spec)
		want   func(k *task) string
	}{
		{"command found through the task's PATH", func(_ *task, s *Spec) {
			s.Argv = []string{"only-in-task-path"}
			s.Env = []string{"GREETING=hello from the task env", "PATH=" + shadow + ":" + bin + ":/usr/bin:/bin"}
		}, func(*task) string { return "hello from the task env\n" }},
		{"last PATH wins", func(_ *task, s *Spec) {
			s.Argv = []string{"only-in-task-path"}
			s.Env = []string{"PATH=/nonexistent", "GREETING=x", "PATH=" + bin}
		}, func(*task) string { return "x\n" }},
		{"environment is exactly the spec's", func(_ *task, s *Spec) {
			s.Argv = []string{"env"}
			s.Env = []string{"PATH=/usr/bin:/bin", "A=1", "B=with spaces", "EMPTY="}
		}, func(*task) string { return "PATH=/usr/bin:/bin\nA=1\nB=with spaces\nEMPTY=\n" }},
		{"working directory", func(_ *task, s *Spec) {
			s.Argv = []string{"/bin/pwd"}
			s.Dir = workDir
		}, func(*task) string { return workDir + "\n" }},
		{"default working directory is the state directory's parent", func(_ *task, s *Spec) {
			s.Argv = []string{"/bin/pwd"}
		}, func(k *task) string { return k.root + "\n" }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			spec := k.spec()
			tc.modify(k, &spec)
			exit := k.wait(k.started(spec))
			if exit.ExitCode != 0 {
				b, _ := os.ReadFile(k.stderr)
				t.Fatalf("exit %+v, stderr %q", exit, b)
			}
			b, err := os.ReadFile(k.stdout)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := string(b), tc.want(k); got != want {
				t.Fatalf("stdout %q, want %q", got, want)
			}
		})
	}
}

// Output files are appended to, across attempts; a Launch where a shim has
// run a task before refuses (ErrLaunched) and leaves that task's record.
func TestOutputAppendedAndRelaunch(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	for _, f := range []string{k.stdout, k.stderr} {
		if err := os.WriteFile(f, []byte("before\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	first := k.wait(k.started(k.sh("echo out1; echo err1 >&2; exit 3")))
	if first.ExitCode != 3 {
		t.Fatalf("first attempt: %+v", first)
	}
	if _, err := Launch(t.Context(), shimBin, k.dir, k.sh("echo never")); !errors.Is(err, ErrLaunched) {
		t.Fatalf("Launch over a finished task: %v, want ErrLaunched", err)
	}
	if res, _, err := Inspect(t.Context(), k.dir); err != nil || res.Exit == nil || !sameExit(*res.Exit, first) {
		t.Fatalf("Inspect after the refused Launch: %+v, %v; want the first attempt's %+v", res, err, first)
	}
	// A second attempt, in a state directory of its own, appends to the
	// same output files.
	k.dir = filepath.Join(k.root, "shim2")
	second := k.wait(k.started(k.sh("echo out2; echo err2 >&2")))
	if second.ExitCode != 0 || second.Reason != ReasonSucceeded {
		t.Fatalf("second attempt: %+v", second)
	}
	for f, want := range map[string]string{k.stdout: "before\nout1\nout2\n", k.stderr: "before\nerr1\nerr2\n"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Errorf("%s holds %q, want %q", filepath.Base(f), b, want)
		}
	}
}

func TestStopTermReachesProcessGroup(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	// The shell survives TERM long enough to collect its background child
	// and record how that child died; only a TERM sent to the whole group
	// reaches the child.
	st := k.started(k.sh(`trap 'wait $child; echo "$?" > child.status; exit 0' TERM
sleep 60 & child=$!
echo $child > child.pid
wait`))
	child, err := strconv.Atoi(k.waitFile("child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	childStart := mustStart(t, child)

	k.stop(time.Minute)
	exit := k.wait(st)
	// Exit 0 shows the shell ended through its trap, so SIGTERM, not the
	// SIGKILL a minute later, ended the task.
	if exit.ExitCode != 0 || exit.Signal != 0 || exit.Message != "stopped on request" {
		t.Fatalf("exit %+v, want code 0 and message %q", exit, "stopped on request")
	}
	if got, want := k.waitFile("child.status"), strconv.Itoa(128+int(syscall.SIGTERM)); got != want {
		t.Fatalf("background child ended with status %s, want %s (killed by SIGTERM)", got, want)
	}
	eventually(t, "the background child is gone", func() bool { return !running(child, childStart) })
}

func TestStopKillsAfterGrace(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		grace time.Duration
		// minimum is how long the task must survive the stop request.
		minimum time.Duration
	}{
		{"grace expires", 400 * time.Millisecond, 400 * time.Millisecond},
		{"zero grace kills at once", 0, 0},
		{"negative grace kills at once", -time.Second, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			// An ignored disposition survives exec, so sleep ignores TERM too.
			st := k.started(k.sh("trap '' TERM; echo ready > ready; exec sleep 60"))
			k.waitFile("ready")
			begin := time.Now()
			k.stop(tc.grace)
			exit := k.wait(st)
			elapsed := time.Since(begin)
			wantCode, wantSig := 128+int32(syscall.SIGKILL), int32(syscall.SIGKILL)
			if exit.ExitCode != wantCode || exit.Signal != wantSig || exit.Reason != ReasonFailed {
				t.Fatalf("exit %+v, want code %d signal %d", exit, wantCode, wantSig)
			}
			if elapsed < tc.minimum {
				t.Fatalf("killed after %v, before the grace period of %v", elapsed, tc.grace)
			}
			if running(st.PID, st.PIDStart) {
				t.Fatal("the task still runs after Wait returned")
			}
		})
	}
}

// terminate documents that "a second call can only shorten the grace
// period": a second stop with a shorter grace must bring the kill forward.
func TestStopSecondRequestShortensGrace(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh("trap '' TERM; echo ready > ready; exec sleep 60"))
	k.waitFile("ready")
	k.stop(time.Hour)
	k.stop(200 * time.Millisecond)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	exit, err := Wait(ctx, k.dir, st)
	if err != nil {
		t.Fatalf("the task still runs 5s after a stop with a 200ms grace period (a first stop asked for 1h): Wait: %v", err)
	}
	if exit.Signal != int32(syscall.SIGKILL) {
		t.Fatalf("exit %+v, want killed by SIGKILL", exit)
	}
}

func TestLeftoverGroupMembersKilled(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh(`sleep 60 & echo $! > bg.pid
while [ ! -e go ]; do sleep 0.01; done
exit 4`))
	bg, err := strconv.Atoi(k.waitFile("bg.pid"))
	if err != nil {
		t.Fatal(err)
	}
	bgStart := mustStart(t, bg)
	k.touch("go")
	exit := k.wait(st)
	if exit.ExitCode != 4 || exit.Reason != ReasonFailed {
		t.Fatalf("exit %+v, want code 4", exit)
	}
	// sleep 60 cannot have ended on its own by now: gone means killed.
	eventually(t, "the background process is gone", func() bool { return !running(bg, bgStart) })
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		script   string
		timeout  time.Duration
		grace    time.Duration
		code     int32
		sig      syscall.Signal
		reason   string
		minimum  time.Duration
		stopping bool
	}{
		{"TERM ends the task", "exec sleep 60", 300 * time.Millisecond, time.Minute,
			128 + int32(syscall.SIGTERM), syscall.SIGTERM, ReasonTaskTimeout, 300 * time.Millisecond, true},
		{"KILL after the grace", "trap '' TERM; exec sleep 60", 300 * time.Millisecond, 300 * time.Millisecond,
			128 + int32(syscall.SIGKILL), syscall.SIGKILL, ReasonTaskTimeout, 600 * time.Millisecond, true},
		{"finishes in time", "exit 0", time.Minute, time.Second, 0, 0, ReasonSucceeded, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			spec := k.sh(tc.script)
			spec.Timeout, spec.Grace = tc.timeout, tc.grace
			st := k.started(spec)
			exit := k.wait(st)
			if exit.ExitCode != tc.code || exit.Signal != int32(tc.sig) || exit.Reason != tc.reason {
				t.Fatalf("exit %+v, want code %d signal %d reason %s", exit, tc.code, tc.sig, tc.reason)
			}
			if ran := exit.FinishedAt.Sub(exit.StartedAt); ran < tc.minimum {
				t.Fatalf("task ran %v, less than %v", ran, tc.minimum)
			}
			if tc.stopping && !strings.Contains(exit.Message, tc.timeout.String()) {
				t.Errorf("message %q does not name the timeout %v", exit.Message, tc.timeout)
			}
		})
	}
}

func TestWaitFromGoroutine(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh("while [ ! -e go ]; do sleep 0.01; done; exit 5"))

	// Several waiters at once, as a plugin's watchers and its Stop may be.
	type result struct {
		exit Exit
		err  error
	}
	results := make(chan result, 3)
	for range cap(results) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), patience)
			defer cancel()
			exit, err := Wait(ctx, k.dir, st)
			results <- result{exit, err}
		}()
	}
	// A Wait whose context ends while the shim runs returns the context's
	// error and leaves the shim alone.
	short, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, err := Wait(short, k.dir, st); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with an expired context on a running shim: %v, want DeadlineExceeded", err)
	}
	select {
	case r := <-results:
		t.Fatalf("Wait returned while the task still ran: %+v", r)
	default:
	}
	if !running(st.ShimPID, st.ShimStart) || !running(st.PID, st.PIDStart) {
		t.Fatal("the shim or the task ended after an abandoned Wait")
	}

	k.touch("go")
	var first Exit
	for i := range cap(results) {
		r := <-results
		if r.err != nil {
			t.Fatalf("Wait: %v", r.err)
		}
		if r.exit.ExitCode != 5 {
			t.Fatalf("exit %+v, want code 5", r.exit)
		}
		if i == 0 {
			first = r.exit
		} else if !sameExit(r.exit, first) {
			t.Fatalf("waiters disagree: %+v and %+v", first, r.exit)
		}
	}
}

func TestInspect(t *testing.T) {
	t.Parallel()
	t.Run("no shim ever launched", func(t *testing.T) {
		t.Parallel()
		for _, dir := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
			if _, _, err := Inspect(t.Context(), dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Inspect(%s): %v, want os.ErrNotExist", dir, err)
			}
		}
	})
	t.Run("shim died before starting the task", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		// What a launch that crashed before the shim started the task
		// leaves: a state directory nobody holds locked.
		if err := os.MkdirAll(k.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, _, err := Inspect(t.Context(), k.dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("Inspect: %v, want os.ErrNotExist", err)
		}
		// The plugin then launches again, and must be able to.
		if exit := k.wait(k.started(k.spec("true"))); exit.ExitCode != 0 {
			t.Fatalf("relaunch: %+v", exit)
		}
	})
	t.Run("running then finished", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		st := k.started(k.sh("while [ ! -e go ]; do sleep 0.01; done; exit 2"))
		res, alive, err := Inspect(t.Context(), k.dir)
		if err != nil {
			t.Fatal(err)
		}
		if !alive || res.State == nil || res.Exit != nil || !sameState(*res.State, st) {
			t.Fatalf("Inspect of a running task: %+v alive=%v, want state %+v and alive", res, alive, st)
		}
		k.touch("go")
		exit := k.wait(st)
		res, alive, err = Inspect(t.Context(), k.dir)
		if err != nil {
			t.Fatal(err)
		}
		if alive || res.Exit == nil || res.State != nil || !sameExit(*res.Exit, exit) {
			t.Fatalf("Inspect of a finished task: %+v alive=%v, want %+v and not alive", res, alive, exit)
		}
	})
}

// killShim SIGKILLs the shim named in state.json, as an OOM killer or an
// operator would.
func killShim(t *testing.T, k *task) State {
	t.Helper()
	var st State
	// The shim reports to its launcher first and writes state.json right
	// after.
	eventually(t, "state.json is written", func() bool { return readJSON(k.dir, stateFile, &st) == nil })
	if !running(st.ShimPID, st.ShimStart) {
		t.Fatalf("shim %d is not running", st.ShimPID)
	}
	if err := syscall.Kill(st.ShimPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	return st
}

func checkLost(t *testing.T, exit Exit, st State) {
	t.Helper()
	if exit.Reason != ReasonStatusUnknown || exit.ExitCode != 137 {
		t.Fatalf("exit %+v, want reason %s and code 137", exit, ReasonStatusUnknown)
	}
	if !exit.StartedAt.Equal(st.StartedAt) {
		t.Errorf("StartedAt %v, want %v", exit.StartedAt, st.StartedAt)
	}
	// Nobody supervises the task any more, so it must not run on.
	eventually(t, "the orphaned task is killed", func() bool { return !running(st.PID, st.PIDStart) })
}

func TestShimKilled(t *testing.T) {
	t.Parallel()
	t.Run("Wait", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		k.started(k.spec("sleep", "60"))
		st := killShim(t, k)
		checkLost(t, k.wait(st), st)
		res, alive, err := Inspect(t.Context(), k.dir)
		if err != nil {
			t.Fatal(err)
		}
		if alive || res.Exit == nil {
			t.Fatalf("Inspect: %+v alive=%v", res, alive)
		}
		checkLost(t, *res.Exit, st)
		if err := Stop(k.dir, 0); !errors.Is(err, ErrGone) {
			t.Fatalf("Stop with the shim dead: %v, want ErrGone", err)
		}
	})
	t.Run("Inspect", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		k.started(k.spec("sleep", "60"))
		st := killShim(t, k)
		var res Result
		// The lock goes with the shim, a moment after the signal.
		eventually(t, "Inspect sees the shim dead", func() bool {
			var alive bool
			var err error
			res, alive, err = Inspect(t.Context(), k.dir)
			if err != nil {
				t.Fatalf("Inspect: %v", err)
			}
			return !alive
		})
		if res.Exit == nil {
			t.Fatalf("Inspect: %+v, want an exit", res)
		}
		checkLost(t, *res.Exit, st)
		exit := k.wait(st)
		checkLost(t, exit, st)
	})
}

// A State's PIDs are trusted only with their start times: a recycled PID
// must neither be waited on nor killed.
func TestWaitChecksProcessIdentity(t *testing.T) {
	t.Parallel()
	self := os.Getpid()
	selfStart := mustStart(t, self)

	t.Run("exit recorded", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		want := k.wait(k.started(k.sh("exit 6")))
		stale := State{ShimPID: self, ShimStart: selfStart + 1}
		ctx, cancel := context.WithTimeout(t.Context(), patience)
		defer cancel()
		got, err := Wait(ctx, k.dir, stale)
		if err != nil {
			t.Fatalf("Wait on a PID that is no longer the shim: %v", err)
		}
		if !sameExit(got, want) {
			t.Fatalf("got %+v, want the recorded %+v", got, want)
		}
	})
	t.Run("nothing recorded, task PID recycled", func(t *testing.T) {
		t.Parallel()
		// An unrelated process that now holds the task's old PID.
		other := exec.Command("sleep", "60")
		other.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = other.Process.Kill()
			_ = other.Wait()
		})
		otherStart := mustStart(t, other.Process.Pid)
		dir := t.TempDir()
		stale := State{
			ShimPID: self, ShimStart: selfStart + 1,
			PID: other.Process.Pid, PIDStart: otherStart + 1,
			StartedAt: time.Now().Add(-time.Minute),
		}
		ctx, cancel := context.WithTimeout(t.Context(), patience)
		defer cancel()
		got, err := Wait(ctx, dir, stale)
		if err != nil {
			t.Fatalf("Wait on a PID that is no longer the shim: %v", err)
		}
		if got.Reason != ReasonStatusUnknown || got.ExitCode != 137 || !got.StartedAt.Equal(stale.StartedAt) {
			t.Fatalf("got %+v, want a lost task", got)
		}
		// kill(2) queues SIGKILL before it returns, so a kill by Wait would
		// show here as pending even if the process has not died yet.
		if !running(other.Process.Pid, otherStart) || killPending(t, other.Process.Pid) {
			t.Fatal("Wait killed an unrelated process that reused the task's PID")
		}
	})
}

func TestLaunchRefusesWhileShimAlive(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh("while [ ! -e go ]; do sleep 0.01; done"))
	state := filepath.Join(k.dir, stateFile)
	eventually(t, "the shim has recorded the task", func() bool { _, err := os.Stat(state); return err == nil })
	before, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	if res, err := Launch(ctx, shimBin, k.dir, k.spec("true")); err == nil {
		t.Fatalf("second Launch succeeded with %+v", res)
	}
	// The refused Launch must not have touched the live shim's files.
	res, alive, err := Inspect(t.Context(), k.dir)
	if err != nil || !alive || res.State == nil || !sameState(*res.State, st) {
		t.Fatalf("after the refused Launch, Inspect: %+v alive=%v err=%v", res, alive, err)
	}
	if after, err := os.ReadFile(state); err != nil || string(after) != string(before) {
		t.Fatalf("the live shim's state was touched: %s, %v", after, err)
	}
	k.touch("go")
	if exit := k.wait(st); exit.ExitCode != 0 {
		t.Fatalf("exit %+v", exit)
	}
}

// A launcher that gives up waiting must not take the task down with it; a
// restarted plugin finds the shim with Inspect.
func TestLaunchCanceledShimCarriesOn(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	ctx, cancel := context.WithCancel(t.Context())
	// Cancelled before the shim can possibly have reported.
	cancel()
	if _, err := Launch(ctx, shimBin, k.dir, k.sh("while [ ! -e go ]; do sleep 0.01; done; exit 9")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Launch with a cancelled context: %v, want context.Canceled", err)
	}
	// The shim reports into a socket nobody reads any more; it must
	// survive the EPIPE and carry on.
	inspectCtx, cancelInspect := context.WithTimeout(t.Context(), patience)
	defer cancelInspect()
	res, alive, err := Inspect(inspectCtx, k.dir)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !alive || res.State == nil {
		t.Fatalf("Inspect: %+v alive=%v, want the running task", res, alive)
	}
	k.mu.Lock()
	k.states = append(k.states, *res.State)
	k.mu.Unlock()
	k.touch("go")
	if exit := k.wait(*res.State); exit.ExitCode != 9 {
		t.Fatalf("exit %+v, want code 9", exit)
	}
}

func TestLaunchBadShimPath(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	if _, err := Launch(ctx, filepath.Join(k.root, "no-shim-here"), k.dir, k.spec("true")); err == nil {
		t.Fatal("Launch with a missing shim executable succeeded")
	}
	// Poll: a process another test forks at that moment holds a copy of
	// every descriptor until it execs, the lock's included.
	eventually(t, "the failed Launch has let go of the lock", func() bool { return !lockHeld(k.dir) })
	if exit := k.wait(k.started(k.spec("true"))); exit.ExitCode != 0 {
		t.Fatalf("Launch after a failed one: %+v", exit)
	}
}

// fdTargets maps each open descriptor of pid to what it refers to.
func fdTargets(t *testing.T, pid int) map[string]string {
	t.Helper()
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		out[e.Name()] = target
	}
	return out
}

func fdPath(pid int, fd string) string { return fmt.Sprintf("/proc/%d/fd/%s", pid, fd) }

func sameFileAs(link, path string) bool {
	a, err1 := os.Stat(link)
	b, err2 := os.Stat(path)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// strayDescriptors lists pid's descriptors from lowest up that refer to
// nothing this test process has open itself.
func strayDescriptors(t *testing.T, pid, lowest int) []string {
	t.Helper()
	self := fdTargets(t, os.Getpid())
	var stray []string
	for fd := range fdTargets(t, pid) {
		if n, _ := strconv.Atoi(fd); n < lowest {
			continue
		}
		inherited := false
		for own := range self {
			if sameFileAs(fdPath(pid, fd), fdPath(os.Getpid(), own)) {
				inherited = true
			}
		}
		if !inherited {
			stray = append(stray, fd)
		}
	}
	return stray
}

func TestTaskIsolation(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.spec("sleep", "60"))

	task, err := readProc(st.PID)
	if err != nil {
		t.Fatal(err)
	}
	shim, err := readProc(st.ShimPID)
	if err != nil {
		t.Fatal(err)
	}
	if task.start != st.PIDStart || shim.start != st.ShimStart {
		t.Fatalf("recorded start times %d/%d, /proc says %d/%d", st.PIDStart, st.ShimStart, task.start, shim.start)
	}
	if task.ppid != st.ShimPID || task.ppid == os.Getpid() {
		t.Errorf("task's parent is %d, want the shim %d (the test is %d)", task.ppid, st.ShimPID, os.Getpid())
	}
	if task.pgrp != st.PID {
		t.Errorf("task is in process group %d, want its own (%d)", task.pgrp, st.PID)
	}
	self, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if shim.sid != st.ShimPID || shim.sid == self.sid || task.sid != st.ShimPID {
		t.Errorf("sessions: shim %d, task %d, test %d; want the shim's own session %d for both",
			shim.sid, task.sid, self.sid, st.ShimPID)
	}

	// The task inherits only its standard descriptors: not the lock (it
	// would keep the shim looking alive after the shim died). Anything else it holds must come from the environment
	// this test runs in, not from the shim (see
	// TestLaunchPassesOnNoInheritedDescriptors).
	lock := k.dir
	// Polled: the dynamic loader of the freshly exec'd task briefly holds
	// descriptors of its own. A leaked descriptor stays, and fails this.
	var problems []string
	deadline := time.Now().Add(patience)
	for {
		problems = nil
		fds := fdTargets(t, st.PID)
		for fd, target := range fds {
			link := fdPath(st.PID, fd)
			if sameFileAs(link, lock) {
				problems = append(problems, fmt.Sprintf("task holds fd %s on %s", fd, target))
			}
		}
		for fd, path := range map[string]string{"0": os.DevNull, "1": k.stdout, "2": k.stderr} {
			if !sameFileAs(fdPath(st.PID, fd), path) {
				problems = append(problems, fmt.Sprintf("task's fd %s is %q, want %s", fd, fds[fd], path))
			}
		}
		for _, fd := range strayDescriptors(t, st.PID, 3) {
			problems = append(problems, fmt.Sprintf("task holds fd %s on %s, which the launcher does not have open", fd, fds[fd]))
		}
		if len(problems) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, p := range problems {
		t.Error(p)
	}

	// The shim holds the lock, and no pipe: its standard descriptors are
	// /dev/null, its only tie to the launcher is the report socket, whose
	// loss it survives (TestLaunchCanceledShimCarriesOn).
	for _, fd := range strayDescriptors(t, st.ShimPID, 0) {
		if target, err := os.Readlink(fdPath(st.ShimPID, fd)); err == nil && strings.HasPrefix(target, "pipe:") {
			t.Errorf("the shim holds fd %s on %s", fd, target)
		}
	}
	holdsLock := false
	for fd := range fdTargets(t, st.ShimPID) {
		if sameFileAs(fdPath(st.ShimPID, fd), lock) {
			holdsLock = true
		}
	}
	if !holdsLock {
		t.Error("the shim does not hold the lock file open")
	}

	// The shim catches these signals; the task must get them back at their
	// default, neither ignored nor caught.
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID))
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"SigIgn", "SigCgt"} {
		mask := sigMask(t, string(status), field)
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE} {
			if mask&(1<<(uint(sig)-1)) != 0 {
				t.Errorf("task has %v in %s", sig, field)
			}
		}
	}
}

// killPending reports whether SIGKILL is queued for pid.
func killPending(t *testing.T, pid int) bool {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	bit := uint64(1) << (uint(syscall.SIGKILL) - 1)
	return (sigMask(t, string(status), "SigPnd")|sigMask(t, string(status), "ShdPnd"))&bit != 0
}

func sigMask(t *testing.T, status, field string) uint64 {
	t.Helper()
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatalf("no %s in /proc status", field)
	return 0
}

// A stray signal a terminal or a careless kill sends to the shim must not
// end it: the task would lose its supervisor and its exit status.
func TestShimSurvivesTerminalSignals(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.spec("sleep", "60"))
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT, syscall.SIGPIPE} {
		if err := syscall.Kill(st.ShimPID, sig); err != nil {
			t.Fatal(err)
		}
	}
	// Had the signals killed the shim, it would have died long before it
	// could record the stopped task's exit, and Wait would report it lost.
	k.stop(time.Minute)
	exit := k.wait(st)
	if exit.Reason != ReasonFailed || exit.Signal != int32(syscall.SIGTERM) || exit.Message != "stopped on request" {
		t.Fatalf("exit %+v, want the task stopped by SIGTERM", exit)
	}
}

func TestStopGone(t *testing.T) {
	t.Parallel()
	t.Run("finished", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		k.wait(k.started(k.spec("true")))
		if err := Stop(k.dir, time.Second); !errors.Is(err, ErrGone) {
			t.Fatalf("Stop of a finished shim: %v, want ErrGone", err)
		}
	})
	t.Run("never launched", func(t *testing.T) {
		t.Parallel()
		if err := Stop(t.TempDir(), time.Second); !errors.Is(err, ErrGone) {
			t.Fatalf("Stop without a shim: %v, want ErrGone", err)
		}
	})
}

// A plugin may itself have been started with descriptors that are not
// close-on-exec (the host's parent's pipes, say). Passed on, they would keep
// such a pipe open for as long as any task runs, and hand the task whatever
// they refer to. Not parallel: the descriptor made here would otherwise leak
// into other tests' processes too.
func TestLaunchPassesOnNoInheritedDescriptors(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	// What a descriptor inherited across exec looks like.
	if _, err := unix.FcntlInt(w.Fd(), unix.F_SETFD, 0); err != nil {
		t.Fatal(err)
	}
	k := newTask(t)
	st := k.started(k.spec("sleep", "60"))
	for _, pid := range []int{st.ShimPID, st.PID} {
		for fd := range fdTargets(t, pid) {
			if sameFileAs(fdPath(pid, fd), fdPath(os.Getpid(), strconv.Itoa(int(w.Fd())))) {
				who := "task"
				if pid == st.ShimPID {
					who = "shim"
				}
				t.Errorf("the %s (PID %d) holds fd %s, the launcher's non-close-on-exec pipe", who, pid, fd)
			}
		}
	}
}

// TestOutputCap: with MaxLogBytes, a task writing far more than the cap
// keeps running correctly, each stream stays within the cap on disk, the
// newest output is kept, and it is complete once the exit is known.
func TestOutputCap(t *testing.T) {
	t.Parallel()
	const limit = 1 << 20
	tests := []struct {
		name   string
		script string
		// wantTail ends the stream's current file.
		stdoutTail, stderrTail string
		rotated                bool
	}{
		// 50 MB on stdout and 3 MB on stderr, in one task.
		{"50MB", `head -c 50000000 /dev/zero | tr '\0' x; yes err | head -c 3000000 >&2; echo err-last >&2; echo; echo last-line`,
			"last-line\n", "err\nerr-last\n", true},
		{"small", `echo hello; echo oops >&2`, "hello\n", "oops\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			spec := k.sh(tc.script)
			spec.MaxLogBytes = limit
			exit := k.wait(k.started(spec))
			if exit.ExitCode != 0 {
				t.Fatalf("task ended %+v", exit)
			}
			for f, tail := range map[string]string{k.stdout: tc.stdoutTail, k.stderr: tc.stderrTail} {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasSuffix(string(b), tail) {
					t.Errorf("%s ends %q, want %q", filepath.Base(f), b[max(0, len(b)-40):], tail)
				}
				total := int64(len(b))
				fi, err := os.Stat(f + ".1")
				if err == nil {
					total += fi.Size()
				}
				if (err == nil) != tc.rotated {
					t.Errorf("%s.1: %v; want it there: %v", filepath.Base(f), err, tc.rotated)
				}
				// Half the cap per file, overshot by at most one chunk.
				if total > limit+64<<10 {
					t.Errorf("%s and its rotated file hold %d bytes; cap %d", filepath.Base(f), total, limit)
				}
			}
		})
	}
}

// TestOutputFilesMadeAtFirstOutput: with MaxLogBytes, a stream's file is
// created when the task first writes to it, not before; a stream the task
// never writes to leaves no file, and an existing file is appended to.
func TestOutputFilesMadeAtFirstOutput(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	if err := os.WriteFile(k.stderr, []byte("earlier\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The task looks for its stdout file before its first output and
	// waits for it after, while it still runs; it reports on stderr.
	spec := k.sh(`test -e "$OUT" && echo "stdout.log exists too early" >&2
echo first
for i in $(seq 500); do test -e "$OUT" && break; sleep 0.01; done
test -e "$OUT" || echo "stdout.log missing 5s after the output" >&2
echo done >&2`)
	spec.Env = append(spec.Env, "OUT="+k.stdout)
	spec.MaxLogBytes = 1 << 20
	if exit := k.wait(k.started(spec)); exit.ExitCode != 0 {
		t.Fatalf("task ended %+v", exit)
	}
	for f, want := range map[string]string{k.stdout: "first\n", k.stderr: "earlier\ndone\n"} {
		if b, err := os.ReadFile(f); err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", filepath.Base(f), b, err, want)
		}
	}

	quiet := newTask(t)
	spec = quiet.sh(`exit 0`)
	spec.MaxLogBytes = 1 << 20
	quiet.wait(quiet.started(spec))
	for _, f := range []string{quiet.stdout, quiet.stderr} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("a task that wrote nothing left %s: %v", filepath.Base(f), err)
		}
	}
}

// TestStopIsAQueuedSignal: a stop request reaches the shim as a queued
// signal, so recording a task makes no control file; the same signal sent
// with kill(2), as a careless kill of the shim would, carries no request
// and changes nothing; the task starts with the signal unblocked.
func TestStopIsAQueuedSignal(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh("trap 'exit 3' TERM; while :; do sleep 0.01; done"))
	eventually(t, "the shim has recorded the task", func() bool { return readJSON(k.dir, stateFile, &State{}) == nil })
	ents, err := os.ReadDir(k.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != stateFile {
			t.Errorf("recording the task made %s", e.Name())
		}
	}
	// Between the shim's fork and its exec, and while sh forks, every
	// signal is blocked for a moment: the mask is looked at until it shows
	// the task's own (a task started with the signal blocked keeps it
	// blocked, and fails here).
	eventually(t, "the task runs with the stop signal unblocked", func() bool {
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.PID))
		for _, line := range strings.Split(string(status), "\n") {
			if b, ok := strings.CutPrefix(line, "SigBlk:"); ok {
				mask, err := strconv.ParseUint(strings.TrimSpace(b), 16, 64)
				return err == nil && mask&(1<<(stopSignal-1)) == 0
			}
		}
		return false
	})

	if err := unix.Kill(st.ShimPID, stopSignal); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the shim logs that it ignored the signal", func() bool {
		b, _ := os.ReadFile(filepath.Join(k.dir, logFile))
		return strings.Contains(string(b), "ignoring a stop signal")
	})
	if !running(st.PID, st.PIDStart) {
		t.Fatal("a stop signal sent with kill(2) stopped the task")
	}
	k.stop(patience)
	if exit := k.wait(st); exit.ExitCode != 3 || exit.Message != "stopped on request" {
		t.Fatalf("exit %+v, want code 3, stopped on request", exit)
	}
}
