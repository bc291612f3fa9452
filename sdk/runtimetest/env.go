package runtimetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// Deadlines of the kit. They are generous because they only bound how long
// a broken runtime takes to fail; a working one is never near them.
const (
	// callTimeout bounds one call to the runtime.
	callTimeout = 30 * time.Second
	// settleTimeout bounds how long a short task takes to terminate, or a
	// condition to become true.
	settleTimeout = 20 * time.Second
	// pollInterval is how often eventually checks a condition.
	pollInterval = 20 * time.Millisecond
	// defaultGrace is what the kit assumes a runtime's grace period is when
	// the harness does not set sdk.SettingGracePeriod (the process
	// plugin's default).
	defaultGrace = 10 * time.Second
)

// suite is the state shared by all tests of one Run.
type suite struct {
	h Harness
	// prefix makes task names unique across runs, for runtimes whose
	// state outlives a test (a container daemon).
	prefix string
	next   atomic.Int64
	grace  time.Duration
	// stopSlack: see defaultStopSlack.
	stopSlack time.Duration
}

func newSuite(t *testing.T, h Harness) *suite {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("cannot make a random task name prefix: %v", err)
	}
	s := &suite{h: h, prefix: "ct" + hex.EncodeToString(b), grace: defaultGrace}
	if v, ok := h.Settings()[sdk.SettingGracePeriod]; ok {
		g, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("harness setting %s=%q is not a duration: %v", sdk.SettingGracePeriod, v, err)
		}
		s.grace = g
	}
	s.stopSlack = defaultStopSlack
	if sl, ok := h.(StopSlacker); ok {
		s.stopSlack = sl.StopSlack()
	}
	if s.grace <= s.stopSlack+time.Second {
		t.Fatalf("the harness's grace period (%s) must exceed the stop slack (%s) by more than 1s, or the kit cannot tell a runtime that honours Stop's grace argument from one that uses its default", s.grace, s.stopSlack)
	}
	return s
}

var (
	dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	nonAlnum     = regexp.MustCompile(`[^a-z0-9]+`)
)

// taskName returns a fresh task name. It is a DNS-1123 label (and so also a
// subdomain), because runtimes may use it as a container or host name.
func (s *suite) taskName(t *testing.T) string {
	t.Helper()
	// The test's own name makes a leftover task easy to trace back.
	leaf := t.Name()
	if i := strings.LastIndexByte(leaf, '/'); i >= 0 {
		leaf = leaf[i+1:]
	}
	slug := strings.Trim(nonAlnum.ReplaceAllString(strings.ToLower(leaf), "-"), "-")
	if len(slug) > 24 {
		slug = strings.TrimRight(slug[:24], "-")
	}
	n := s.next.Add(1)
	name := fmt.Sprintf("%s-%d", s.prefix, n)
	if slug != "" {
		name = fmt.Sprintf("%s-%s-%d", s.prefix, slug, n)
	}
	if len(name) > 63 || !dns1123Label.MatchString(name) {
		t.Fatalf("the kit made an invalid task name %q", name)
	}
	return name
}

// env is what one test works in: a data directory shared by the runtime
// instances it launches one after the other (as a host that restarts its
// plugin), and the tasks created in it.
type env struct {
	s       *suite
	dataDir string

	mu      sync.Mutex
	tasks   []sdk.Task
	current *instance
	// cleaned is set once every task has been stopped through a live
	// instance, so the janitor has nothing to do.
	cleaned bool
}

// instance is an Instance launched by the kit.
type instance struct {
	Instance
	rt     sdk.Runtime
	info   sdk.Info // what Init returned
	killed bool     // guarded by env.mu
}

func (s *suite) newEnv(t *testing.T) *env {
	e := &env{s: s, dataDir: t.TempDir()}
	if c, ok := s.h.(DataDirCleaner); ok {
		t.Cleanup(func() { c.CleanDataDir(t, e.dataDir) })
	}
	// Registered first so it runs last (before only the cleaner), after
	// every instance's cleanup.
	t.Cleanup(func() { e.janitor(t) })
	return e
}

// launch starts and initialises a new instance, which becomes the current
// one.
func (e *env) launch(t *testing.T) *instance {
	t.Helper()
	inst := &instance{Instance: e.s.h.Launch(t)}
	inst.rt = inst.Runtime()
	e.mu.Lock()
	e.current = inst
	e.mu.Unlock()
	// Registered after the harness's own cleanup for the instance, so it
	// runs before it: tasks are stopped while the instance still runs.
	t.Cleanup(func() { e.release(t, inst) })

	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	info, err := inst.rt.Init(ctx, sdk.Config{DataDir: e.dataDir, Settings: e.s.h.Settings()})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if info.Name == "" || len(info.Kinds) == 0 {
		t.Fatalf("Init returned %+v: a runtime must name itself and the spec kinds it runs", info)
	}
	inst.info = info
	return inst
}

// kill crashes inst; its tasks must live on.
func (e *env) kill(inst *instance) {
	e.mu.Lock()
	inst.killed = true
	e.mu.Unlock()
	inst.Kill()
}

// release stops every task of the env if inst is the live instance, and
// closes inst.
func (e *env) release(t *testing.T, inst *instance) {
	e.mu.Lock()
	live := e.current == inst && !inst.killed
	e.mu.Unlock()
	if live {
		e.stopAll(t, inst.rt)
	}
	inst.Close()
}

// janitor stops the tasks that a test left behind without a live instance
// (it failed after killing one): it launches a new instance, recovers them
// and stops them.
func (e *env) janitor(t *testing.T) {
	e.mu.Lock()
	todo := !e.cleaned && len(e.tasks) > 0
	tasks := append([]sdk.Task(nil), e.tasks...)
	e.mu.Unlock()
	if !todo {
		return
	}
	t.Logf("launching an instance to stop the tasks the test left behind")
	inst := e.launch(t)
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if _, err := inst.rt.Recover(ctx, tasks); err != nil {
		t.Errorf("cleanup: Recover: %v", err)
	}
	// launch registered release for inst, which stops the tasks.
}

// stopAll stops every task of the env at once (grace 0), checks that none
// is left running, and removes them, as the host does when it deletes
// tasks: a runtime that keeps anything for a task (a container daemon's
// objects) releases it there.
func (e *env) stopAll(t *testing.T, rt sdk.Runtime) {
	e.mu.Lock()
	tasks := append([]sdk.Task(nil), e.tasks...)
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	for _, task := range tasks {
		if err := rt.Stop(ctx, task.Name, 0); err != nil && !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("cleanup: Stop(%s, 0): %v", task.Name, err)
			continue
		}
		st, err := rt.Status(ctx, task.Name)
		switch {
		case errors.Is(err, sdk.ErrNotFound):
		case err != nil:
			t.Errorf("cleanup: Status(%s): %v", task.Name, err)
		case !st.IsTerminal():
			t.Errorf("cleanup: task %s is still %s after Stop returned", task.Name, describe(st))
		}
		if err := rt.Remove(ctx, task.Name); err != nil {
			t.Errorf("cleanup: Remove(%s): %v", task.Name, err)
		}
		removeDir(t, task.Dir)
	}
	e.mu.Lock()
	e.cleaned = true
	e.mu.Unlock()
}

// removeDir removes a terminated task's directory, as the host does once
// a deletion is done. A runtime's supervisor may still be writing its last
// record there just after the exit was reported (a removal then finds the
// directory not empty): it is tried again for a while.
func removeDir(t *testing.T, dir string) {
	deadline := time.Now().Add(settleTimeout)
	for {
		err := os.RemoveAll(dir)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup: removing %s: %v", dir, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// task creates a task that runs script, with its directory, as the host
// does before it hands a task to a runtime.
func (e *env) task(t *testing.T, script string, opts SpecOptions) sdk.Task {
	t.Helper()
	return e.taskWithSpec(t, e.s.h.Spec(script, opts))
}

func (e *env) taskWithSpec(t *testing.T, spec sdk.TaskSpec) sdk.Task {
	t.Helper()
	name := e.s.taskName(t)
	task := sdk.Task{Name: name, Spec: spec, Dir: filepath.Join(e.dataDir, name)}
	if err := os.Mkdir(task.Dir, 0o700); err != nil {
		t.Fatalf("cannot create the task directory: %v", err)
	}
	e.mu.Lock()
	e.tasks = append(e.tasks, task)
	// A new task means there is something to clean up again.
	e.cleaned = false
	e.mu.Unlock()
	return task
}

// start validates and starts task, as the host does, and checks the status
// Start returns.
func start(t *testing.T, rt sdk.Runtime, task sdk.Task) sdk.TaskStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := rt.Validate(ctx, task.Spec); err != nil {
		t.Fatalf("Validate(%s): %v", task.Name, err)
	}
	st, err := rt.Start(ctx, task)
	if err != nil {
		t.Fatalf("Start(%s): %v", task.Name, err)
	}
	checkStatus(t, task.Name, st)
	return st
}

// checkStatus checks the shape of a status: the task's name and exactly one
// state.
func checkStatus(t *testing.T, name string, st sdk.TaskStatus) {
	t.Helper()
	if st.Name != name {
		t.Errorf("status is for task %q, want %q", st.Name, name)
	}
	n := 0
	for _, set := range []bool{st.State.Waiting != nil, st.State.Running != nil, st.State.Terminated != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		t.Errorf("status of %s has %d states set, want exactly one: %+v", name, n, st.State)
	}
}

// status returns a task's status, failing t on an error.
func status(t *testing.T, rt sdk.Runtime, name string) sdk.TaskStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	st, err := rt.Status(ctx, name)
	if err != nil {
		t.Fatalf("Status(%s): %v", name, err)
	}
	checkStatus(t, name, st)
	return st
}

// stop stops a task and returns how long Stop took.
func stop(t *testing.T, rt sdk.Runtime, name string, grace time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	began := time.Now()
	if err := rt.Stop(ctx, name, grace); err != nil {
		t.Fatalf("Stop(%s, %s): %v", name, grace, err)
	}
	return time.Since(began)
}

// eventually calls check until it returns nil, and fails t with check's
// last error if that does not happen within timeout.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not the case after %s: %v", timeout, err)
		}
		time.Sleep(pollInterval)
	}
}

// waitTerminated waits until Status reports the task terminated.
func waitTerminated(t *testing.T, rt sdk.Runtime, name string, timeout time.Duration) *corev1.ContainerStateTerminated {
	t.Helper()
	var term *corev1.ContainerStateTerminated
	eventually(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		st, err := rt.Status(ctx, name)
		if err != nil {
			return fmt.Errorf("Status(%s): %w", name, err)
		}
		if !st.IsTerminal() {
			return fmt.Errorf("task %s is %s, want terminated", name, describe(st))
		}
		checkStatus(t, name, st)
		term = st.State.Terminated
		return nil
	})
	return term
}

// waitOutput waits until the task's output contains want.
func (e *env) waitOutput(t *testing.T, task sdk.Task, want string) {
	t.Helper()
	eventually(t, settleTimeout, func() error {
		if out := e.s.h.Output(t, task); !strings.Contains(out, want) {
			return fmt.Errorf("output of %s is %q, want it to contain %q", task.Name, out, want)
		}
		return nil
	})
}

// want is the terminated state a test expects: each field lists the values
// it accepts (a plain exit accepts only signal 0).
type want struct {
	codes   []int32
	signals []int32
	reasons []string
}

// exited is the state of a task that exited with code on its own.
func exited(code int32) want {
	reason := sdk.ReasonFailed
	if code == 0 {
		reason = sdk.ReasonSucceeded
	}
	return want{codes: []int32{code}, signals: []int32{0}, reasons: []string{reason}}
}

// check compares term with w, and checks its timestamps.
func (w want) check(t *testing.T, name string, term *corev1.ContainerStateTerminated) {
	t.Helper()
	if !contains(w.codes, term.ExitCode) || !contains(w.signals, term.Signal) || !contains(w.reasons, term.Reason) {
		t.Errorf("task %s terminated with exitCode %d, signal %d, reason %q (message %q); want exitCode in %v, signal in %v, reason in %q",
			name, term.ExitCode, term.Signal, term.Reason, term.Message, w.codes, w.signals, w.reasons)
	}
	checkTimes(t, name, term)
}

// checkTimes checks the timestamps of a task that did start.
func checkTimes(t *testing.T, name string, term *corev1.ContainerStateTerminated) {
	t.Helper()
	if term.StartedAt.IsZero() || term.FinishedAt.IsZero() {
		t.Errorf("task %s terminated with startedAt %v and finishedAt %v; want both set", name, term.StartedAt, term.FinishedAt)
	} else if term.FinishedAt.Before(&term.StartedAt) {
		t.Errorf("task %s finished at %v, before it started at %v", name, term.FinishedAt, term.StartedAt)
	}
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// startedAt returns when a running or terminated task started.
func startedAt(st sdk.TaskStatus) time.Time {
	switch {
	case st.State.Running != nil:
		return st.State.Running.StartedAt.Time
	case st.State.Terminated != nil:
		return st.State.Terminated.StartedAt.Time
	}
	return time.Time{}
}

// describe renders a status for a failure message.
func describe(st sdk.TaskStatus) string {
	switch s := st.State; {
	case s.Terminated != nil:
		return fmt.Sprintf("terminated (exitCode %d, signal %d, reason %q, message %q)",
			s.Terminated.ExitCode, s.Terminated.Signal, s.Terminated.Reason, s.Terminated.Message)
	case s.Running != nil:
		return fmt.Sprintf("running (since %v)", s.Running.StartedAt)
	case s.Waiting != nil:
		return fmt.Sprintf("waiting (reason %q, message %q)", s.Waiting.Reason, s.Waiting.Message)
	}
	return "in no state"
}
