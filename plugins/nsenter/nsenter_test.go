package nsenter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/internal/testbin"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// binDir holds task-executor, which serves the runtime as a built-in
// plugin, with the shim it carries.
var binDir string

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "nsenter-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	if err := testbin.Executor(context.Background(), filepath.Join(binDir, "task-executor"), testbin.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// launchPlugin starts the runtime as the host does: task-executor serving
// it as a separate process, with the shim it carries.
func launchPlugin(t testing.TB) runtimetest.Instance {
	return runtimetest.LaunchCommand(t, []string{filepath.Join(binDir, "task-executor"), "plugin", Name}, []string{"TASK_EXECUTOR_SHIM="})
}

// harness runs the conformance kit against the nsenter plugin, with a main
// container to run the tasks in.
type harness struct{ container string }

func (h harness) Launch(t *testing.T) runtimetest.Instance {
	return launchPlugin(t)
}
func (harness) Spec(script string, opts runtimetest.SpecOptions) sdk.TaskSpec {
	return runtimetest.ShellSpec(script, opts)
}
func (harness) StartErrorSpec() sdk.TaskSpec { return runtimetest.MissingCommandSpec() }

// DefaultDir: a task without a working directory runs in the main
// process's (runtimetest.StartContainer's main process runs in /tmp/wd).
func (harness) DefaultDir(sdk.Task) string { return "/tmp/wd" }
func (harness) Output(t *testing.T, task sdk.Task) string {
	return runtimetest.ReadTaskFiles(t, task)
}
func (h harness) Settings() map[string]string {
	// Output goes through the shim's relay, as under the host's default cap.
	return map[string]string{sdk.SettingGracePeriod: "3s", sdk.SettingMainContainerName: h.container, sdk.SettingMaxLogBytes: "104857600"}
}

func TestConformance(t *testing.T) {
	name := fmt.Sprintf("conformance-%d", os.Getpid())
	runtimetest.StartContainer(t, "main-box", "SANDBOX_MAIN_CONTAINER="+name)
	runtimetest.Run(t, harness{container: name})
}

// launchRuntime launches the plugin for the main container name.
func launchRuntime(t testing.TB, name string) sdk.Runtime {
	t.Helper()
	inst := launchPlugin(t)
	rt := inst.Runtime()
	dataDir := t.TempDir()
	t.Cleanup(func() { removeTaskCgroups(t, dataDir) })
	info, err := rt.Init(context.Background(), sdk.Config{DataDir: dataDir, Settings: map[string]string{
		sdk.SettingGracePeriod: "2s", sdk.SettingMainContainerName: name,
	}})
	if err != nil || info.Name != "nsenter" {
		t.Fatalf("Init: %+v, %v", info, err)
	}
	return rt
}

// removeTaskCgroups ends and removes the task cgroups a runtime on dataDir
// made below the test's own cgroups, where the main processes of these
// tests run (unless a test moved one, and removes that cgroup itself): a
// container's go with the container.
func removeTaskCgroups(t testing.TB, dataDir string) {
	mgr, err := cgroups.New("", shimdriver.CgroupID(dataDir, Name))
	if err != nil {
		t.Errorf("task cgroups: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, p := range mgr.Parents() {
		entries, _ := os.ReadDir(p)
		for _, e := range entries {
			if g, err := mgr.Group(e.Name()); err == nil && e.IsDir() {
				if err := g.Remove(ctx); err != nil {
					t.Errorf("removing a task cgroup: %v", err)
				}
			}
		}
	}
	if err := mgr.RemoveParents(); err != nil {
		t.Errorf("removing the task cgroups' parents: %v", err)
	}
}

// CleanDataDir removes the task cgroups' parents below main's (the
// test's own) once the kit has removed every task.
func (harness) CleanDataDir(t *testing.T, dataDir string) { removeTaskCgroups(t, dataDir) }

func newTask(t testing.TB, name, script string, env ...corev1.EnvVar) sdk.Task {
	dir := filepath.Join(t.TempDir(), name)
	for _, f := range []string{"", "stdout.log", "stderr.log"} {
		var err error
		if f == "" {
			err = os.MkdirAll(dir, 0o700)
		} else {
			err = os.WriteFile(filepath.Join(dir, f), nil, 0o640)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return sdk.Task{Name: name, Dir: dir, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sh", "-c", script}, Env: env}}}
}

func waitTerminated(t testing.TB, rt sdk.Runtime, name string) *corev1.ContainerStateTerminated {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := rt.Status(context.Background(), name)
		if err == nil && st.State.Terminated != nil {
			return st.State.Terminated
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not terminate: %+v %v", name, st.State, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTaskRunsInTheMainContainer: the task's namespaces are the main
// process's, and so are its host name, its /proc, its environment (with the
// task's own on top) and its working directory; the executor's files are not
// visible inside, yet the output reaches the task's directory.
func TestTaskRunsInTheMainContainer(t *testing.T) {
	name := fmt.Sprintf("ns-%d", os.Getpid())
	c := runtimetest.StartContainer(t, "main-box", "SANDBOX_MAIN_CONTAINER="+name, "FROM_MAIN=main", "OVERRIDDEN=main")
	rt := launchRuntime(t, name)
	task := newTask(t, "inside", `for ns in pid mnt net uts ipc; do echo "$ns $(readlink /proc/self/ns/$ns)"; done
echo "hostname $(hostname)"
echo "pid1 $(cat /proc/1/comm)"
echo "pwd $(pwd)"
echo "env $FROM_MAIN $OVERRIDDEN"
[ -e "$TASK_DIR" ] && echo "sees-executor-files"
exit 0`, corev1.EnvVar{Name: "OVERRIDDEN", Value: "task"})
	task.Spec.Process.Env = append(task.Spec.Process.Env, corev1.EnvVar{Name: "TASK_DIR", Value: task.Dir})
	if _, err := rt.Start(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if term := waitTerminated(t, rt, task.Name); term.ExitCode != 0 {
		t.Fatalf("task: %+v", term)
	}
	out, err := os.ReadFile(filepath.Join(task.Dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		got[k] = v
	}
	for _, ns := range []string{"pid", "mnt", "net", "uts", "ipc"} {
		if want := c.Namespace(t, ns); got[ns] != want {
			t.Errorf("task's %s namespace %q, want the main process's %q", ns, got[ns], want)
		}
	}
	for k, want := range map[string]string{"hostname": "main-box", "pid1": "sleep", "pwd": "/tmp/wd", "env": "main task"} {
		if got[k] != want {
			t.Errorf("%s: %q, want %q", k, got[k], want)
		}
	}
	if _, ok := got["sees-executor-files"]; ok {
		t.Error("the task sees the executor's files inside the main container")
	}
}

// TestWaitsForTheMainContainer: a task created before the main container
// waits (MainContainerNotFound) and starts once it appears; a task stopped
// while waiting never runs.
func TestWaitsForTheMainContainer(t *testing.T) {
	name := fmt.Sprintf("late-%d", os.Getpid())
	rt := launchRuntime(t, name)
	early := newTask(t, "early", "exit 3")
	never := newTask(t, "never", "echo ran > \"$MARK\"")
	mark := filepath.Join(t.TempDir(), "ran")
	never.Spec.Process.Env = []corev1.EnvVar{{Name: "MARK", Value: mark}}
	for _, task := range []sdk.Task{early, never} {
		st, err := rt.Start(context.Background(), task)
		if err != nil {
			t.Fatal(err)
		}
		if w := st.State.Waiting; w == nil || w.Reason != "MainContainerNotFound" || w.Message == "" {
			t.Fatalf("Start before the main container: %+v, want waiting MainContainerNotFound", st.State)
		}
	}
	if err := rt.Stop(context.Background(), never.Name, time.Second); err != nil {
		t.Fatal(err)
	}
	runtimetest.StartContainer(t, "late-box", "SANDBOX_MAIN_CONTAINER="+name)
	if term := waitTerminated(t, rt, early.Name); term.ExitCode != 3 {
		t.Fatalf("early task: %+v, want exit 3", term)
	}
	if term := waitTerminated(t, rt, never.Name); term.StartedAt.IsZero() == false {
		t.Fatalf("a task stopped while waiting has a start time: %+v", term)
	}
	if _, err := os.Stat(mark); !os.IsNotExist(err) {
		t.Fatal("a task stopped while waiting ran anyway")
	}
}

// TestStopLeavesNothingInTheContainer: stopping a task that started
// children in the main container ends all of them: SIGTERM first, SIGKILL
// after the grace period.
func TestStopLeavesNothingInTheContainer(t *testing.T) {
	name := fmt.Sprintf("stop-%d", os.Getpid())
	c := runtimetest.StartContainer(t, "stop-box", "SANDBOX_MAIN_CONTAINER="+name)
	rt := launchRuntime(t, name)
	task := newTask(t, "busy", "sleep 300 & sleep 300 & trap '' TERM; while :; do sleep 0.1; done")
	if _, err := rt.Start(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(c.Processes(t)) < 4 { // main, sh, two sleeps
		if time.Now().After(deadline) {
			t.Fatalf("the task's processes never showed up in the container: %v", c.Processes(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	if err := rt.Stop(context.Background(), task.Name, time.Second); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < time.Second {
		t.Fatalf("a task ignoring SIGTERM stopped after %s, before its grace period", took)
	}
	// The rest of the task's group got its SIGKILL before Stop returned;
	// a process dies a moment after its kill.
	deadline = time.Now().Add(5 * time.Second)
	for left := c.Processes(t); len(left) != 1 || left[0] != c.Pid; left = c.Processes(t) {
		if time.Now().After(deadline) {
			t.Fatalf("processes left in the container: %v, want only the main process %d", left, c.Pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFollowsARestartedMainContainer: once the main container has been
// replaced (a new process, new namespaces), new tasks go to the new one.
func TestFollowsARestartedMainContainer(t *testing.T) {
	name := fmt.Sprintf("restart-%d", os.Getpid())
	rt := launchRuntime(t, name)
	hostnameOf := func(task sdk.Task) string {
		if _, err := rt.Start(context.Background(), task); err != nil {
			t.Fatal(err)
		}
		if term := waitTerminated(t, rt, task.Name); term.ExitCode != 0 {
			t.Fatalf("task %s: %+v", task.Name, term)
		}
		out, err := os.ReadFile(filepath.Join(task.Dir, "stdout.log"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	first := runtimetest.StartContainer(t, "first-box", "SANDBOX_MAIN_CONTAINER="+name)
	if got := hostnameOf(newTask(t, "before", "hostname")); got != "first-box" {
		t.Fatalf("task ran on %q, want first-box", got)
	}
	first.Stop()
	runtimetest.StartContainer(t, "second-box", "SANDBOX_MAIN_CONTAINER="+name)
	if got := hostnameOf(newTask(t, "after", "hostname")); got != "second-box" {
		t.Fatalf("task ran on %q after the main container restarted, want second-box", got)
	}
}

// BenchmarkSidecarStart: Start of a task in the main container (found,
// confined: credentials, namespaces, its cgroups and a cgroup of its own)
// until the Start answer (the task runs), then its exit until Status shows
// it, one task at a time.
func BenchmarkSidecarStart(b *testing.B) {
	name := fmt.Sprintf("bench-%d", os.Getpid())
	runtimetest.StartContainer(b, "bench-box", "SANDBOX_MAIN_CONTAINER="+name)
	rt := launchRuntime(b, name)
	ctx := context.Background()
	starts := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		task := newTask(b, fmt.Sprintf("t-%d", i), "exit 0")
		began := time.Now()
		if _, err := rt.Start(ctx, task); err != nil {
			b.Fatal(err)
		}
		starts = append(starts, time.Since(began))
		if term := waitTerminated(b, rt, task.Name); term.ExitCode != 0 {
			b.Fatalf("task %s: %+v", task.Name, term)
		}
		b.StopTimer()
		if err := rt.Remove(ctx, task.Name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(starts)
	b.ReportMetric(float64(starts[len(starts)/2].Microseconds())/1000, "start-p50-ms")
	b.ReportMetric(float64(starts[len(starts)*9/10].Microseconds())/1000, "start-p90-ms")
}
