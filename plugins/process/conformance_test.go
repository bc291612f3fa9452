package process_test

import (
	"bytes"
	"context"
	"errors"
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

	"github.com/opensandbox/task-executor/internal/testbin"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// Environment of a child test process run by TestConformanceCatchesBrokenRuntimes.
const (
	// envMutant names the deliberate defect the child injects.
	envMutant = "PROCESS_CONFORMANCE_MUTANT"
	// envBinDir hands the parent's binaries down, so the child does not
	// build them again.
	envBinDir = "PROCESS_CONFORMANCE_BIN_DIR"
)

// binDir holds the binary under test, <binDir>/task-executor, built as
// `make build` builds it: the runtime is served by it as a built-in plugin,
// in a process of its own, with the shim it carries.
var binDir string

// raceLogs is where a plugin built with the race detector writes its
// reports; empty when the test binary is not a race build.
var raceLogs string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	log := hclog.New(&hclog.LoggerOptions{Name: "conformance", Output: os.Stderr})
	// Orphaned shims and tasks (their plugin was killed) are re-parented to
	// us instead of init, so that the leak check below sees every process
	// the tests started, and nothing escapes it.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		log.Error("cannot become a child subreaper", "error", err)
		return 1
	}
	tmp, err := os.MkdirTemp("", "process-conformance-")
	if err != nil {
		log.Error("cannot create a temporary directory", "error", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	race := runtimetest.RaceEnabled()
	if race {
		raceLogs = filepath.Join(tmp, "race")
		if err := os.Mkdir(raceLogs, 0o700); err != nil {
			log.Error("cannot create the race log directory", "error", err)
			return 1
		}
	}
	binDir = os.Getenv(envBinDir)
	if binDir == "" {
		binDir = filepath.Join(tmp, "bin")
		if err := build(binDir, race); err != nil {
			log.Error("cannot build the binaries under test", "error", err)
			return 1
		}
	}

	code := m.Run()
	if leaked := leftovers(log); leaked > 0 {
		log.Error("processes outlived the tests; killed them", "count", leaked)
		code = 1
	}
	if raceLogs != "" {
		reports, _ := filepath.Glob(filepath.Join(raceLogs, "*"))
		for _, r := range reports {
			b, _ := os.ReadFile(r)
			log.Error("the race detector reported a race in the plugin", "file", filepath.Base(r), "report", string(b))
			code = 1
		}
	}
	return code
}

func build(dir string, race bool) error {
	return testbin.Executor(context.Background(), filepath.Join(dir, "task-executor"), testbin.Options{Race: race})
}

// leftovers kills, by PID, the processes descended from this one that still
// run once the tests are over, reaps every child and returns how many it
// killed.
func leftovers(log hclog.Logger) int {
	killed := 0
	for _, pid := range descendants() {
		cmdline, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		log.Error("process outlived the tests", "pid", pid, "cmdline", strings.ReplaceAll(string(cmdline), "\x00", " "))
		_ = syscall.Kill(pid, syscall.SIGKILL)
		killed++
	}
	// Orphans re-parented to us are ours to reap (every plugin has been
	// waited for already); killed ones take a moment to die and be
	// re-parented, hence the polling.
	deadline := time.Now().Add(5 * time.Second)
	for {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
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
	type proc struct {
		ppid   int
		zombie bool
	}
	procs := map[int]proc{}
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
		// The command name may hold spaces; the fields after its closing
		// parenthesis do not.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(fields[1])
		procs[pid] = proc{ppid: ppid, zombie: fields[0] == "Z"}
	}
	children := map[int][]int{}
	for pid, p := range procs {
		children[p.ppid] = append(children[p.ppid], pid)
	}
	var out []int
	queue := []int{os.Getpid()}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			queue = append(queue, c)
			if !procs[c].zombie {
				out = append(out, c)
			}
		}
	}
	return out
}

// processHarness runs the conformance kit against the process runtime as
// task-executor serves it, a separate process over gRPC.
type processHarness struct {
	// mutant, when set, injects a defect (see mutate) to check that the
	// kit notices it.
	mutant string
}

func (h processHarness) Launch(t *testing.T) runtimetest.Instance {
	// An empty TASK_EXECUTOR_SHIM makes the plugin use the shim it
	// carries, whatever the caller's environment says.
	env := []string{"TASK_EXECUTOR_SHIM="}
	if raceLogs != "" {
		// No sleep at exit: every Close and Kill would wait for it.
		env = append(env, "GORACE=log_path="+filepath.Join(raceLogs, "plugin")+" atexit_sleep_ms=0")
	}
	inst := runtimetest.LaunchCommand(t, []string{filepath.Join(binDir, "task-executor"), "plugin", "process"}, env)
	if h.mutant != "" {
		return mutantInstance{Instance: inst, rt: mutantRuntime{Runtime: inst.Runtime(), mutant: h.mutant}}
	}
	return inst
}

func (processHarness) Spec(script string, opts runtimetest.SpecOptions) sdk.TaskSpec {
	return runtimetest.ShellSpec(script, opts)
}

func (processHarness) StartErrorSpec() sdk.TaskSpec { return runtimetest.MissingCommandSpec() }

// DefaultDir: a task without a working directory runs in its own.
func (processHarness) DefaultDir(task sdk.Task) string { return task.Dir }

func (processHarness) Output(t *testing.T, task sdk.Task) string {
	return runtimetest.ReadTaskFiles(t, task)
}

// Settings sets a grace period short enough to keep timeouts quick, yet
// longer than the kit's stop slack, so that the kit can tell Stop's grace
// argument from the default.
func (processHarness) Settings() map[string]string {
	// Output goes through the shim's relay, as under the host's default cap.
	return map[string]string{sdk.SettingGracePeriod: "3s", sdk.SettingMaxLogBytes: "104857600"}
}

// CleanDataDir removes the parent of the tasks' cgroups, which fails if
// the runtime left a task's cgroup behind.
func (processHarness) CleanDataDir(t *testing.T, dataDir string) {
	mgr, err := cgroups.New("", shimdriver.CgroupID(dataDir, "process"))
	if err != nil {
		t.Errorf("task cgroups: %v", err)
		return
	}
	// The spare cgroups of the last instance's idle shims, which its next
	// start would have removed.
	if err := mgr.RemoveSpares(context.Background()); err != nil {
		t.Errorf("spare cgroups: %v", err)
	}
	if err := mgr.RemoveParents(); err != nil {
		t.Errorf("the runtime left task cgroups behind: %v", err)
	}
}

func TestConformance(t *testing.T) {
	runtimetest.Run(t, processHarness{mutant: os.Getenv(envMutant)})
}

// Mutants: deliberate defects layered over the real plugin. Each must make
// the kit fail, or the kit's assertions are weaker than they look.
const (
	// mutantExitCode reports every exit code off by one.
	mutantExitCode = "exit-code-off-by-one"
	// mutantNoGrace stops every task with no grace period at all.
	mutantNoGrace = "stop-without-grace"
	// mutantForgetful recovers nothing after a restart.
	mutantForgetful = "recover-nothing"
)

type mutantInstance struct {
	runtimetest.Instance
	rt sdk.Runtime
}

func (m mutantInstance) Runtime() sdk.Runtime { return m.rt }

type mutantRuntime struct {
	sdk.Runtime
	mutant string
}

func (m mutantRuntime) Status(ctx context.Context, name string) (sdk.TaskStatus, error) {
	st, err := m.Runtime.Status(ctx, name)
	if m.mutant == mutantExitCode && err == nil && st.IsTerminal() {
		term := *st.State.Terminated
		term.ExitCode++
		st.State.Terminated = &term
	}
	return st, err
}

func (m mutantRuntime) Stop(ctx context.Context, name string, grace time.Duration) error {
	if m.mutant == mutantNoGrace {
		grace = 0
	}
	return m.Runtime.Stop(ctx, name, grace)
}

func (m mutantRuntime) Recover(ctx context.Context, tasks []sdk.Task) ([]sdk.TaskStatus, error) {
	sts, err := m.Runtime.Recover(ctx, tasks)
	if m.mutant == mutantForgetful {
		return nil, err
	}
	return sts, err
}

// TestConformanceCatchesBrokenRuntimes runs parts of the kit in a child
// test process against a plugin with a deliberate defect and expects them
// to fail.
func TestConformanceCatchesBrokenRuntimes(t *testing.T) {
	if os.Getenv(envMutant) != "" {
		// This is the child, run for TestConformance alone; -test.run keeps
		// it from getting here, and recursing would be pointless anyway.
		t.Fatal("the mutant child must run TestConformance only")
	}
	tests := []struct {
		mutant  string
		subtest string
		// wantFail is a failing subtest the defect must cause.
		wantFail string
	}{
		{mutantExitCode, "exit-codes", "--- FAIL: TestConformance/exit-codes/exit-3"},
		{mutantNoGrace, "stop", "--- FAIL: TestConformance/stop/term-handled"},
		{mutantForgetful, "recovery", "--- FAIL: TestConformance/recovery/running-task-survives"},
	}
	for _, tc := range tests {
		t.Run(tc.mutant, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestConformance$/^"+tc.subtest+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), envMutant+"="+tc.mutant, envBinDir+"="+binDir)
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) {
				t.Fatalf("the child test with mutant %s should have failed, got error %v; output:\n%s", tc.mutant, err, out)
			}
			if !bytes.Contains(out, []byte(tc.wantFail)) {
				t.Errorf("the child test with mutant %s failed, but not with %q; output:\n%s", tc.mutant, tc.wantFail, out)
			}
		})
	}
}
