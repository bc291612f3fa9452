package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
)

// plugin is the retry plugin under test, built once for the package.
var plugin string

// raceLogs is where a plugin built with the race detector writes its
// reports; empty when the test binary is not a race build.
var raceLogs string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	log := hclog.New(&hclog.LoggerOptions{Name: "retry-test", Output: os.Stderr})
	// Supervisors orphaned by a killed plugin are re-parented to this
	// process instead of init, so the leak check below sees them all.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Error("cannot become a child subreaper", "error", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "retry-plugin-test-")
	if err != nil {
		log.Error("cannot create a temporary directory", "error", err)
		return 1
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-o", filepath.Join(tmp, "retry")}
	if runtimetest.RaceEnabled() {
		raceLogs = filepath.Join(tmp, "race")
		if err := os.Mkdir(raceLogs, 0o700); err != nil {
			log.Error("cannot create the race log directory", "error", err)
			return 1
		}
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		log.Error("cannot build the plugin", "error", err, "output", string(out))
		return 1
	}
	plugin = filepath.Join(tmp, "retry")

	code := m.Run()
	if n := killLeftovers(log); n > 0 {
		log.Error("processes outlived the tests; killed them", "count", n)
		code = 1
	}
	var reports []string
	if raceLogs != "" {
		reports, _ = filepath.Glob(filepath.Join(raceLogs, "*"))
	}
	for _, r := range reports {
		b, _ := os.ReadFile(r)
		log.Error("the race detector reported a race in the plugin", "file", filepath.Base(r), "report", string(b))
		code = 1
	}
	return code
}

// killLeftovers kills, by PID, the descendants of this process that still
// run, reaps every child, and returns how many it killed.
func killLeftovers(log hclog.Logger) int {
	killed := 0
	for _, pid := range descendants() {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		log.Error("process outlived the tests", "pid", pid, "cmdline", strings.ReplaceAll(string(cmdline), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
		killed++
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
		if len(descendants()) == 0 || time.Now().After(deadline) {
			return killed
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// descendants returns the PIDs of this process's live (not zombie)
// descendants.
func descendants() []int {
	children := map[int][]int{}
	zombie := map[int]bool{}
	entries, _ := os.ReadDir("/proc")
	for _, ent := range entries {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces; the fields after it do not.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		children[ppid] = append(children[ppid], pid)
		zombie[pid] = fields[0] == "Z"
	}
	var out []int
	for queue := []int{os.Getpid()}; len(queue) > 0; queue = queue[1:] {
		for _, c := range children[queue[0]] {
			queue = append(queue, c)
			if !zombie[c] {
				out = append(out, c)
			}
		}
	}
	return out
}

// harness runs the conformance kit against the plugin binary, over gRPC.
type harness struct{}

func (harness) Launch(t *testing.T) runtimetest.Instance {
	var env []string
	if raceLogs != "" {
		env = append(env, "GORACE=log_path="+filepath.Join(raceLogs, "plugin")+" atexit_sleep_ms=0")
	}
	return runtimetest.LaunchPlugin(t, plugin, env)
}

func (harness) Spec(script string, opts runtimetest.SpecOptions) sdk.TaskSpec {
	return runtimetest.ShellSpec(script, opts)
}

func (harness) StartErrorSpec() sdk.TaskSpec { return runtimetest.MissingCommandSpec() }

// DefaultDir: a task without a working directory runs in its own.
func (harness) DefaultDir(task sdk.Task) string { return task.Dir }

// InvalidSpecs are refused by Validate: the create's 400.
func (harness) InvalidSpecs() map[string]sdk.TaskSpec {
	spec := func(opts ...string) sdk.TaskSpec {
		s := runtimetest.ShellSpec("true", runtimetest.SpecOptions{})
		s.RuntimeOptions = optionsOf(opts)
		return s
	}
	return map[string]sdk.TaskSpec{
		"an unknown option":        spec("retries=3"),
		"no attempts":              spec("maxAttempts=0"),
		"a backoff without a unit": spec("backoff=5"),
	}
}

func (harness) Output(t *testing.T, task sdk.Task) string { return runtimetest.ReadTaskFiles(t, task) }

// Settings: a grace period short enough for quick timeouts, yet longer than
// the kit's stop slack, so that it can tell Stop's grace from the default.
func (harness) Settings() map[string]string {
	return map[string]string{sdk.SettingGracePeriod: "3s"}
}

// TestConformance runs the SDK's conformance kit with the default retry
// policy (three attempts): a failing task then fails three times before
// it terminates, and the kit must not be able to tell.
func TestConformance(t *testing.T) {
	runtimetest.Run(t, harness{})
}

// callTimeout bounds one call to the plugin, and a wait for a task.
const callTimeout = 20 * time.Second

// started is a plugin launched and initialised by a test.
type started struct {
	inst    runtimetest.Instance
	rt      sdk.Runtime
	dataDir string
}

func launch(t *testing.T) *started {
	t.Helper()
	inst := harness{}.Launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	dataDir := t.TempDir()
	info, err := inst.Runtime().Init(ctx, sdk.Config{DataDir: dataDir, Settings: harness{}.Settings()})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if info.Name != "retry" || len(info.Kinds) != 1 || info.Kinds[0] != sdk.KindProcess {
		t.Fatalf("Init returned %+v; want runtime retry for process tasks", info)
	}
	return &started{inst: inst, rt: inst.Runtime(), dataDir: dataDir}
}

// task makes a task that runs script with the env given as NAME=VALUE, and
// its directory, and stops it (grace 0) when the test ends.
func (s *started) task(t *testing.T, name, script string, env ...string) sdk.Task {
	t.Helper()
	task := s.makeTask(t, name, script, env...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := s.rt.Stop(ctx, name, 0); err != nil && !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("cleanup: Stop(%s): %v", name, err)
		}
	})
	return task
}

// makeTask is task without the stop at the end; opts are its runtime
// options, as KEY=VALUE.
func (s *started) makeTask(t *testing.T, name, script string, opts ...string) sdk.Task {
	t.Helper()
	spec := runtimetest.ShellSpec(script, runtimetest.SpecOptions{})
	spec.RuntimeOptions = optionsOf(opts)
	task := sdk.Task{Name: name, Spec: spec, Dir: filepath.Join(s.dataDir, name)}
	if err := os.Mkdir(task.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return task
}

func (s *started) start(t *testing.T, task sdk.Task) sdk.TaskStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := s.rt.Validate(ctx, task.Spec); err != nil {
		t.Fatalf("Validate(%s): %v", task.Name, err)
	}
	st, err := s.rt.Start(ctx, task)
	if err != nil {
		t.Fatalf("Start(%s): %v", task.Name, err)
	}
	return st
}

// waitFor polls the task's status until cond holds, and returns it.
func (s *started) waitFor(t *testing.T, name string, what string, cond func(sdk.TaskStatus) bool) sdk.TaskStatus {
	t.Helper()
	deadline := time.Now().Add(callTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		st, err := s.rt.Status(ctx, name)
		cancel()
		if err != nil {
			t.Fatalf("Status(%s): %v", name, err)
		}
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s is %+v, still not %s", name, st.State, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *started) waitTerminated(t *testing.T, name string) *corev1.ContainerStateTerminated {
	t.Helper()
	return s.waitFor(t, name, "terminated", sdk.TaskStatus.IsTerminal).State.Terminated
}

// record is the part of the supervisor's retry-status.json the tests read.
type record struct {
	SupervisorPID int `json:"supervisorPid"`
	Attempts      []struct {
		PID        int       `json:"pid"`
		FinishedAt time.Time `json:"finishedAt"`
	} `json:"attempts"`
}

func readRecord(t *testing.T, task sdk.Task) record {
	t.Helper()
	var rec record
	b, err := os.ReadFile(filepath.Join(task.Dir, "retry-status.json"))
	if err != nil {
		t.Fatalf("cannot read task %s's record: %v", task.Name, err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("task %s's record: %v", task.Name, err)
	}
	return rec
}

func TestRetryPolicy(t *testing.T) {
	s := launch(t)
	tests := []struct {
		name   string
		script string
		opts   []string
		// The terminated state wanted, and the output: one line per
		// attempt.
		code        int32
		reason, msg string
		out         string
	}{
		{
			// The options are not in the environment: grep prints
			// nothing.
			name:   "succeeds-on-third-attempt",
			script: `echo "attempt $RETRY_ATTEMPT"; env | grep -e maxAttempts -e backoff; [ "$RETRY_ATTEMPT" -ge 3 ] || exit 75`,
			opts:   []string{"maxAttempts=4", "backoff=10ms"},
			code:   0, reason: sdk.ReasonSucceeded, msg: "succeeded on attempt 3 of 4",
			out: "attempt 1\nattempt 2\nattempt 3\n",
		},
		{
			name:   "gives-up",
			script: `echo "attempt $RETRY_ATTEMPT"; exit $((RETRY_ATTEMPT + 1))`,
			opts:   []string{"maxAttempts=2", "backoff=0s"},
			code:   3, reason: sdk.ReasonFailed, msg: "failed 2 of 2 attempts (exit codes 2, 3)",
			out: "attempt 1\nattempt 2\n",
		},
		{
			name:   "exit-code-not-retried",
			script: `echo "attempt $RETRY_ATTEMPT"; exit 2`,
			opts:   []string{"maxAttempts=5", "backoff=0s", "onExitCodes=75, 69"},
			code:   2, reason: sdk.ReasonFailed, msg: "attempt 1 of 5 failed with exit code 2, which the runtime option onExitCodes does not retry",
			out: "attempt 1\n",
		},
		{
			name:   "success-is-not-retried",
			script: `echo "attempt $RETRY_ATTEMPT"`,
			code:   0, reason: sdk.ReasonSucceeded, msg: "succeeded on attempt 1 of 3",
			out: "attempt 1\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := s.task(t, tc.name, tc.script, tc.opts...)
			s.start(t, task)
			term := s.waitTerminated(t, task.Name)
			if term.ExitCode != tc.code || term.Reason != tc.reason || term.Message != tc.msg {
				t.Errorf("task terminated with exitCode %d, reason %q, message %q; want %d, %q, %q",
					term.ExitCode, term.Reason, term.Message, tc.code, tc.reason, tc.msg)
			}
			if out, _ := os.ReadFile(filepath.Join(task.Dir, "stdout.log")); string(out) != tc.out {
				t.Errorf("stdout is %q, want %q", out, tc.out)
			}
		})
	}
}

func TestStopWhileWaitingToRetry(t *testing.T) {
	s := launch(t)
	task := s.task(t, "backoff", "exit 1", "backoff=1m")
	s.start(t, task)
	// The first attempt has ended once the record says so; the next is a
	// minute away.
	deadline := time.Now().Add(callTimeout)
	for rec := readRecord(t, task); len(rec.Attempts) == 0 || rec.Attempts[0].FinishedAt.IsZero(); rec = readRecord(t, task) {
		if time.Now().After(deadline) {
			t.Fatal("the first attempt never ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	began := time.Now()
	if err := s.rt.Stop(ctx, task.Name, 10*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Stop during the backoff took %s; want it at once", took)
	}
	st, err := s.rt.Status(ctx, task.Name)
	if err != nil || !st.IsTerminal() {
		t.Fatalf("after Stop, Status is %+v, %v; want terminated", st.State, err)
	}
	if term := st.State.Terminated; term.ExitCode != 1 || !strings.HasPrefix(term.Message, "stopped while waiting to retry after attempt 1 of 3") {
		t.Errorf("stopped task terminated with exitCode %d, message %q", term.ExitCode, term.Message)
	}
}

// TestLostSupervisor: a task whose supervisor is killed is reported as
// ended unknowably, never as running forever, and its attempt does not run
// on unsupervised.
func TestLostSupervisor(t *testing.T) {
	s := launch(t)
	// No Stop at the end: the test kills the supervisor itself, and the
	// plugin instance that started the task.
	task := s.makeTask(t, "lost", "sleep 30")
	if st := s.start(t, task); st.State.Running == nil {
		t.Fatalf("Start returned %+v; want running", st.State)
	}
	rec := readRecord(t, task)
	if err := syscall.Kill(rec.SupervisorPID, syscall.SIGKILL); err != nil {
		t.Fatalf("cannot kill the supervisor (pid %d): %v", rec.SupervisorPID, err)
	}
	term := s.waitTerminated(t, task.Name)
	if term.Reason != sdk.ReasonStatusUnknown || term.ExitCode != 137 {
		t.Errorf("task terminated with exitCode %d, reason %q; want 137, %s", term.ExitCode, term.Reason, sdk.ReasonStatusUnknown)
	}
	pid := rec.Attempts[0].PID
	deadline := time.Now().Add(callTimeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the attempt (pid %d) outlived its supervisor", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A new plugin process tells the same story.
	s.inst.Kill()
	b := launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	sts, err := b.rt.Recover(ctx, []sdk.Task{task})
	if err != nil || len(sts) != 1 || !sts[0].IsTerminal() || sts[0].State.Terminated.Reason != sdk.ReasonStatusUnknown ||
		!sts[0].State.Terminated.FinishedAt.Equal(&term.FinishedAt) {
		t.Errorf("Recover returned %+v, %v; want the task terminated with reason %s at %v", sts, err, sdk.ReasonStatusUnknown, term.FinishedAt)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	return b[bytes.LastIndexByte(b, ')')+2] != 'Z'
}

func TestValidate(t *testing.T) {
	s := launch(t)
	process := func(opts ...string) sdk.TaskSpec {
		spec := runtimetest.ShellSpec("true", runtimetest.SpecOptions{})
		spec.RuntimeOptions = optionsOf(opts)
		return spec
	}
	relative := process()
	relative.Process.WorkingDir = "tmp"
	tests := []struct {
		name string
		spec sdk.TaskSpec
		ok   bool
	}{
		{"defaults", process(), true},
		{"full-policy", process("maxAttempts=10", "backoff=250ms", "onExitCodes=75,69"), true},
		{"zero-attempts", process("maxAttempts=0"), false},
		{"too-many-attempts", process("maxAttempts=101"), false},
		{"attempts-not-a-number", process("maxAttempts=three"), false},
		{"backoff-without-unit", process("backoff=5"), false},
		{"backoff-too-long", process("backoff=2h"), false},
		{"exit-code-zero", process("onExitCodes=0"), false},
		{"unknown-option", process("maxAttempt=3"), false},
		{"relative-working-dir", relative, false},
		{"container", sdk.TaskSpec{Container: &corev1.Container{Name: "c", Image: "busybox"}}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			err := s.rt.Validate(ctx, tc.spec)
			switch {
			case tc.ok && err != nil:
				t.Errorf("Validate: %v; want it accepted", err)
			case !tc.ok && !errors.Is(err, sdk.ErrInvalidSpec):
				t.Errorf("Validate returned %v; want an error wrapping sdk.ErrInvalidSpec", err)
			}
		})
	}
}

// optionsOf makes runtime options of KEY=VALUE pairs.
func optionsOf(pairs []string) map[string]string {
	if len(pairs) == 0 {
		return nil
	}
	opts := map[string]string{}
	for _, kv := range pairs {
		k, v, _ := strings.Cut(kv, "=")
		opts[k] = v
	}
	return opts
}
