package runtimetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// defaultStopSlack is how much longer than its grace period a Stop may
// take, and how long a Stop that needs no grace (the task exits on SIGTERM,
// or grace is zero) may take, unless the harness says otherwise (see
// StopSlacker). A harness whose grace period setting is longer than the
// slack lets the kit tell a runtime that honours Stop's grace argument from
// one that uses its default.
const defaultStopSlack = 1500 * time.Millisecond

// Run runs the conformance tests against the runtime of h, as parallel
// subtests of t. Each subtest launches its own instances.
func Run(t *testing.T, h Harness) {
	s := newSuite(t, h)
	tests := []struct {
		name string
		fn   func(*testing.T, *suite)
	}{
		{"exit-codes", testExitCodes},
		{"env", testEnv},
		{"working-dir", testWorkingDir},
		{"default-dir", testDefaultDir},
		{"validate", testValidate},
		{"start-error", testStartError},
		{"output", testOutput},
		{"stop", testStop},
		{"timeout", testTimeout},
		{"events", testEvents},
		{"idempotent-start", testIdempotentStart},
		{"concurrency", testConcurrency},
		{"recovery", testRecovery},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, s)
		})
	}
}

func testExitCodes(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	tests := []struct {
		name   string
		script string
		want   want
	}{
		{"exit-0", "exit 0", exited(0)},
		{"exit-3", "exit 3", exited(3)},
		{"sigkill", "kill -KILL $$", want{codes: []int32{137}, signals: []int32{9}, reasons: []string{sdk.ReasonFailed}}},
		{"sigterm", "kill -TERM $$", want{codes: []int32{143}, signals: []int32{15}, reasons: []string{sdk.ReasonFailed}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := e.task(t, tc.script, SpecOptions{})
			start(t, rt, task)
			tc.want.check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
		})
	}
}

func testEnv(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	tests := []struct {
		name   string
		env    []corev1.EnvVar
		script string
	}{
		{"set", []corev1.EnvVar{{Name: "FOO", Value: "bar"}}, `[ "$FOO" = bar ] || exit 7`},
		{"later-entry-wins", []corev1.EnvVar{{Name: "FOO", Value: "first"}, {Name: "FOO", Value: "bar"}}, `[ "$FOO" = bar ] || exit 7`},
		{"value-kept-verbatim", []corev1.EnvVar{{Name: "FOO", Value: "a=b c 'd'"}}, `[ "$FOO" = "a=b c 'd'" ] || exit 7`},
		// The handshake cookie is the plugin's business; a task that sees
		// it could be mistaken for a plugin, and it shows that the
		// plugin's own environment leaks into tasks unfiltered.
		{"no-plugin-cookie", nil, fmt.Sprintf(`[ -z "${%s+set}" ] || exit 7`, sdk.Handshake.MagicCookieKey)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := e.task(t, tc.script, SpecOptions{Env: tc.env})
			start(t, rt, task)
			// Exit code 7 means the script saw the wrong environment.
			exited(0).check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
		})
	}
}

func testWorkingDir(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	tests := []struct{ name, dir string }{
		{"tmp", "/tmp"},
		{"root", "/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// pwd -P on both sides, because /tmp may be a symlink.
			script := fmt.Sprintf(`[ "$(pwd -P)" = "$(cd %s && pwd -P)" ] || exit 7`, tc.dir)
			task := e.task(t, script, SpecOptions{WorkingDir: tc.dir})
			start(t, rt, task)
			exited(0).check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
		})
	}
}

func testDefaultDir(t *testing.T, s *suite) {
	d, ok := s.h.(DefaultDirer)
	if !ok {
		t.Skip("the harness does not say where a task without a working directory runs (DefaultDirer)")
	}
	e := s.newEnv(t)
	rt := e.launch(t).rt
	task := e.task(t, `pwd -P; echo landed > relative-file`, SpecOptions{})
	want := d.DefaultDir(task)
	start(t, rt, task)
	exited(0).check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
	real, err := filepath.EvalSymlinks(want)
	if err != nil {
		real = want // not a path here: only the task sees it
	}
	if out := s.h.Output(t, task); out != real+"\n" {
		t.Errorf("a task without a working directory ran in %q; want %s", strings.TrimSpace(out), want)
	}
	if want != task.Dir {
		return
	}
	if b, err := os.ReadFile(filepath.Join(task.Dir, "relative-file")); err != nil || string(b) != "landed\n" {
		t.Errorf("the file the task wrote by a relative path is not in its directory %s: %q, %v", task.Dir, b, err)
	}
}

func testValidate(t *testing.T, s *suite) {
	r, ok := s.h.(Refuser)
	if !ok {
		t.Skip("the harness names no spec its runtime refuses (Refuser)")
	}
	e := s.newEnv(t)
	inst := e.launch(t)
	if inst.info.NoValidate {
		t.Errorf("Init returned NoValidate, so the host never asks Validate: specs the runtime refuses would be accepted (201) and fail later")
	}
	for name, spec := range r.InvalidSpecs() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := inst.rt.Validate(ctx, spec)
		cancel()
		if !errors.Is(err, sdk.ErrInvalidSpec) {
			t.Errorf("Validate of a spec with %s: %v; want an error wrapping sdk.ErrInvalidSpec (the host's 400)", name, err)
		}
	}
}

func testStartError(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	task := e.taskWithSpec(t, s.h.StartErrorSpec())
	check := func(when string, st sdk.TaskStatus) {
		t.Helper()
		if !st.IsTerminal() || st.State.Terminated.Reason != sdk.ReasonStartError || st.State.Terminated.ExitCode == 0 {
			t.Fatalf("%s: task %s is %s; want terminated with reason %s and a non-zero exit code",
				when, task.Name, describe(st), sdk.ReasonStartError)
		}
	}
	// Start itself must not fail: a task that cannot start is a state.
	check("Start", start(t, rt, task))
	check("Status", status(t, rt, task.Name))
	check("second Start", start(t, rt, task))
	if took := stop(t, rt, task.Name, s.grace); took > s.stopSlack {
		t.Errorf("Stop of a task that never started took %s; want a no-op", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := rt.Remove(ctx, task.Name); err != nil {
		t.Errorf("Remove(%s): %v", task.Name, err)
	}
}

func testOutput(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	const lines = 2000
	// Much output, and a last line without a newline written just before
	// the exit: output must be complete once the task has terminated.
	script := fmt.Sprintf(`echo to-stdout; echo to-stderr >&2
i=0; while [ $i -lt %d ]; do echo "line $i"; i=$((i+1)); done
printf last-words`, lines)
	task := e.task(t, script, SpecOptions{})
	start(t, rt, task)
	exited(0).check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
	out := s.h.Output(t, task)
	for _, want := range []string{"to-stdout\n", "to-stderr\n", fmt.Sprintf("line %d\n", lines-1), "last-words"} {
		if !strings.Contains(out, want) {
			t.Errorf("output of %s lacks %q", task.Name, want)
		}
	}
	if n := strings.Count(out, "line "); n != lines {
		t.Errorf("output of %s has %d numbered lines, want %d", task.Name, n, lines)
	}
}

func testStop(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	// The script announces itself once its trap is set: a TERM that came
	// earlier would kill the shell before the trap exists.
	const (
		exitsOnTerm = `trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done`
		ignoresTerm = `trap '' TERM; echo ready; while :; do sleep 0.1; done`
	)
	killed := want{codes: []int32{137}, signals: []int32{9}, reasons: []string{sdk.ReasonFailed}}

	tests := []struct {
		name   string
		script string
		grace  time.Duration
		// Stop must take between min and max.
		min, max time.Duration
		want     want
	}{
		{"term-handled", exitsOnTerm, 10 * time.Second, 0, s.stopSlack, exited(0)},
		{"term-ignored", ignoresTerm, time.Second, time.Second, time.Second + s.stopSlack, killed},
		{"zero-grace-kills-at-once", ignoresTerm, 0, 0, s.stopSlack, killed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := e.task(t, tc.script, SpecOptions{})
			start(t, rt, task)
			e.waitOutput(t, task, "ready")
			took := stop(t, rt, task.Name, tc.grace)
			if took < tc.min || took > tc.max {
				t.Errorf("Stop with grace %s took %s; want between %s and %s", tc.grace, took, tc.min, tc.max)
			}
			// Stop returns once the task has terminated, so no polling.
			st := status(t, rt, task.Name)
			if !st.IsTerminal() {
				t.Fatalf("task %s is %s after Stop returned; want terminated", task.Name, describe(st))
			}
			tc.want.check(t, task.Name, st.State.Terminated)
		})
	}

	t.Run("terminated-task", func(t *testing.T) {
		t.Parallel()
		task := e.task(t, "exit 2", SpecOptions{})
		start(t, rt, task)
		before := waitTerminated(t, rt, task.Name, settleTimeout)
		if took := stop(t, rt, task.Name, 10*time.Second); took > s.stopSlack {
			t.Errorf("Stop of a terminated task took %s; want a no-op", took)
		}
		after := status(t, rt, task.Name)
		if !after.IsTerminal() || after.State.Terminated.ExitCode != before.ExitCode ||
			!after.State.Terminated.FinishedAt.Equal(&before.FinishedAt) {
			t.Errorf("Stop changed a terminated task from %s to %s", describe(sdk.TaskStatus{State: corev1.ContainerState{Terminated: before}}), describe(after))
		}
	})

	t.Run("unknown-task", func(t *testing.T) {
		t.Parallel()
		name := s.taskName(t)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		calls := []struct {
			call         string
			do           func() error
			wantNotFound bool
		}{
			{"Stop", func() error { return rt.Stop(ctx, name, 0) }, true},
			{"Status", func() error { _, err := rt.Status(ctx, name); return err }, true},
			// Remove is what the host calls to forget a task; an unknown
			// one is already forgotten.
			{"Remove", func() error { return rt.Remove(ctx, name) }, false},
		}
		for _, c := range calls {
			switch err := c.do(); {
			case c.wantNotFound && !errors.Is(err, sdk.ErrNotFound):
				t.Errorf("%s of an unknown task returned %v; want an error wrapping sdk.ErrNotFound", c.call, err)
			case !c.wantNotFound && err != nil:
				t.Errorf("%s of an unknown task returned %v; want nil", c.call, err)
			}
		}
	})

	t.Run("remove", func(t *testing.T) {
		t.Parallel()
		task := e.task(t, "exit 0", SpecOptions{})
		start(t, rt, task)
		waitTerminated(t, rt, task.Name, settleTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := rt.Remove(ctx, task.Name); err != nil {
			t.Fatalf("Remove(%s): %v", task.Name, err)
		}
		if _, err := rt.Status(ctx, task.Name); !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("Status of a removed task returned %v; want sdk.ErrNotFound", err)
		}
		if err := rt.Stop(ctx, task.Name, 0); !errors.Is(err, sdk.ErrNotFound) {
			t.Errorf("Stop of a removed task returned %v; want sdk.ErrNotFound", err)
		}
		if err := rt.Remove(ctx, task.Name); err != nil {
			t.Errorf("second Remove(%s): %v; want nil", task.Name, err)
		}
		sts, err := rt.List(ctx)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, st := range sts {
			if st.Name == task.Name {
				t.Errorf("List still reports removed task %s as %s", task.Name, describe(st))
			}
		}
	})
}

func testTimeout(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	tests := []struct {
		name     string
		script   string
		timeout  int64
		timesOut bool
		want     want
	}{
		{"exceeded", "sleep 30", 1, true, want{codes: []int32{143, 137}, signals: []int32{15, 9}, reasons: []string{sdk.ReasonTaskTimeout}}},
		{"not-reached", "sleep 0.2; exit 0", 30, false, exited(0)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := e.task(t, tc.script, SpecOptions{TimeoutSeconds: tc.timeout})
			start(t, rt, task)
			// Up to the timeout, the grace period, and then some.
			term := waitTerminated(t, rt, task.Name, time.Duration(tc.timeout)*time.Second+s.grace+settleTimeout)
			tc.want.check(t, task.Name, term)
			if tc.timesOut {
				limit := time.Duration(tc.timeout) * time.Second
				if ran := term.FinishedAt.Sub(term.StartedAt.Time); ran < limit-50*time.Millisecond {
					t.Errorf("task %s with a timeout of %s was stopped after %s", task.Name, limit, ran)
				}
			}
		})
	}
}

func testEvents(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Two subscribers: every one of them must get the events.
	subs := make([]<-chan sdk.TaskStatus, 2)
	for i := range subs {
		ch, err := rt.Events(ctx)
		if err != nil {
			t.Fatalf("Events: %v", err)
		}
		subs[i] = ch
	}
	// The sleep lets the task be seen running before it exits.
	task := e.task(t, "sleep 0.3; exit 4", SpecOptions{})
	began := startedAt(start(t, rt, task))

	for i, ch := range subs {
		evs := collectEvents(t, ch, task.Name, settleTimeout)
		sawRunning := false
		for _, ev := range evs {
			checkStatus(t, task.Name, ev)
			switch {
			case ev.State.Waiting != nil && sawRunning:
				t.Errorf("subscriber %d: task %s went back from running to %s", i, task.Name, describe(ev))
			case ev.State.Running != nil:
				sawRunning = true
				if !ev.State.Running.StartedAt.Time.Equal(began) {
					t.Errorf("subscriber %d: running event has startedAt %v, Start said %v", i, ev.State.Running.StartedAt, began)
				}
			}
		}
		last := evs[len(evs)-1].State.Terminated
		exited(4).check(t, task.Name, last)
		if !last.StartedAt.Time.Equal(began) {
			t.Errorf("subscriber %d: terminated event has startedAt %v, Start said %v", i, last.StartedAt, began)
		}
	}
}

// collectEvents reads ch until it carries the terminal status of name and
// returns name's statuses, the terminal one last.
func collectEvents(t *testing.T, ch <-chan sdk.TaskStatus, name string, timeout time.Duration) []sdk.TaskStatus {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var evs []sdk.TaskStatus
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("the events channel closed before task %s terminated (events so far: %d)", name, len(evs))
			}
			if ev.Name != name {
				continue
			}
			evs = append(evs, ev)
			if ev.IsTerminal() {
				return evs
			}
		case <-deadline.C:
			t.Fatalf("no terminated event for task %s within %s (events so far: %d)", name, timeout, len(evs))
		}
	}
}

func testIdempotentStart(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	// The sleep keeps the task running while the concurrent Starts land;
	// the echo shows how many copies ran.
	task := e.task(t, "echo once; sleep 0.3", SpecOptions{})
	const n = 4
	sts := make([]sdk.TaskStatus, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			sts[i], errs[i] = rt.Start(ctx, task)
		})
	}
	wg.Wait()
	var began time.Time
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent Start %d of %s: %v", i, task.Name, errs[i])
		}
		checkStatus(t, task.Name, sts[i])
		at := startedAt(sts[i])
		if at.IsZero() {
			t.Fatalf("concurrent Start %d of %s returned %s; want running or terminated with a start time", i, task.Name, describe(sts[i]))
		}
		if i == 0 {
			began = at
		} else if !at.Equal(began) {
			t.Errorf("concurrent Starts of %s report startedAt %v and %v; the task was started more than once", task.Name, began, at)
		}
	}
	term := waitTerminated(t, rt, task.Name, settleTimeout)
	exited(0).check(t, task.Name, term)
	again := start(t, rt, task)
	if !again.IsTerminal() || !startedAt(again).Equal(began) {
		t.Errorf("Start of the terminated task %s returned %s, startedAt %v; want its terminated state, startedAt %v",
			task.Name, describe(again), startedAt(again), began)
	}
	if out := s.h.Output(t, task); out != "once\n" {
		t.Errorf("output of %s is %q; want exactly one line \"once\"", task.Name, out)
	}
}

func testConcurrency(t *testing.T, s *suite) {
	e := s.newEnv(t)
	rt := e.launch(t).rt
	const n = 30
	tasks := make([]sdk.Task, n)
	for i := range tasks {
		tasks[i] = e.task(t, fmt.Sprintf("sleep 0.1; exit %d", i%5), SpecOptions{})
	}

	// Status and List run alongside the Starts, as the host's API and its
	// safety-net poll would.
	done := make(chan struct{})
	var readers sync.WaitGroup
	var readErr error
	readers.Go(func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if _, err := rt.List(ctx); err != nil {
				readErr = fmt.Errorf("List: %w", err)
				return
			}
			name := tasks[i%n].Name
			if _, err := rt.Status(ctx, name); err != nil && !errors.Is(err, sdk.ErrNotFound) {
				readErr = fmt.Errorf("Status(%s): %w", name, err)
				return
			}
		}
	})

	errs := make([]error, n)
	var starters sync.WaitGroup
	for i := range tasks {
		starters.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
			defer cancel()
			_, errs[i] = rt.Start(ctx, tasks[i])
		})
	}
	starters.Wait()
	close(done)
	readers.Wait()
	if readErr != nil {
		t.Errorf("while tasks were starting: %v", readErr)
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Start(%s): %v", tasks[i].Name, err)
		}
	}

	for i, task := range tasks {
		exited(int32(i%5)).check(t, task.Name, waitTerminated(t, rt, task.Name, settleTimeout))
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	sts, err := rt.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	listed := make(map[string]sdk.TaskStatus, len(sts))
	for _, st := range sts {
		listed[st.Name] = st
	}
	for i, task := range tasks {
		st, ok := listed[task.Name]
		switch {
		case !ok:
			t.Errorf("List lacks task %s", task.Name)
		case !st.IsTerminal() || st.State.Terminated.ExitCode != int32(i%5):
			t.Errorf("List reports task %s as %s; want terminated with exitCode %d", task.Name, describe(st), i%5)
		}
	}
}

func testRecovery(t *testing.T, s *suite) {
	tests := []struct {
		name string
		fn   func(*testing.T, *env)
	}{
		{"running-task-survives", testRecoverRunning},
		{"exit-while-down", testRecoverExited},
		{"never-started", testRecoverNeverStarted},
		{"start-after-restart", testStartAfterRestart},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, s.newEnv(t))
		})
	}
}

// recoverTasks calls Recover and returns its statuses by task name.
func recoverTasks(t *testing.T, rt sdk.Runtime, tasks ...sdk.Task) map[string]sdk.TaskStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	sts, err := rt.Recover(ctx, tasks)
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	out := make(map[string]sdk.TaskStatus, len(sts))
	for _, st := range sts {
		if _, dup := out[st.Name]; dup {
			t.Errorf("Recover reported task %s twice", st.Name)
		}
		out[st.Name] = st
	}
	return out
}

// testRecoverRunning: a running task survives a crash of the instance that
// started it, and the next instance adopts it.
func testRecoverRunning(t *testing.T, e *env) {
	a := e.launch(t)
	task := e.task(t, "sleep 30", SpecOptions{})
	st := start(t, a.rt, task)
	if st.State.Running == nil {
		t.Fatalf("Start of %s returned %s; want running", task.Name, describe(st))
	}
	began := startedAt(st)
	e.kill(a)

	b := e.launch(t)
	// Twice: Recover is retried after transport errors like any call.
	for attempt := 1; attempt <= 2; attempt++ {
		got := recoverTasks(t, b.rt, task)
		rst, ok := got[task.Name]
		if len(got) != 1 || !ok || rst.State.Running == nil || !startedAt(rst).Equal(began) {
			t.Fatalf("Recover attempt %d returned %v; want only %s, running since %v", attempt, got, task.Name, began)
		}
	}
	if st := status(t, b.rt, task.Name); st.State.Running == nil || !startedAt(st).Equal(began) {
		t.Errorf("after Recover, task %s is %s; want running since %v", task.Name, describe(st), began)
	}
	stop(t, b.rt, task.Name, 10*time.Second)
	st = status(t, b.rt, task.Name)
	if !st.IsTerminal() {
		t.Fatalf("task %s is %s after Stop returned; want terminated", task.Name, describe(st))
	}
	want{codes: []int32{143, 137}, signals: []int32{15, 9}, reasons: []string{sdk.ReasonFailed}}.check(t, task.Name, st.State.Terminated)
}

// testRecoverExited: the exit status of a task that ends while no instance
// runs is not lost.
func testRecoverExited(t *testing.T, e *env) {
	a := e.launch(t)
	task := e.task(t, "sleep 0.5; echo done; exit 5", SpecOptions{})
	began := startedAt(start(t, a.rt, task))
	e.kill(a)
	// Output is read without the runtime, which is down: the task is about
	// to exit once "done" is there.
	e.waitOutput(t, task, "done")

	b := e.launch(t)
	got := recoverTasks(t, b.rt, task)
	rst, ok := got[task.Name]
	if len(got) != 1 || !ok || rst.State.Waiting != nil || !startedAt(rst).Equal(began) {
		t.Fatalf("Recover returned %v; want only %s, running or terminated, started at %v", got, task.Name, began)
	}
	term := waitTerminated(t, b.rt, task.Name, settleTimeout)
	exited(5).check(t, task.Name, term)
	if !term.StartedAt.Time.Equal(began) {
		t.Errorf("recovered task %s has startedAt %v; Start said %v", task.Name, term.StartedAt, began)
	}
}

// testRecoverNeverStarted: Recover leaves out a task it never started, and
// the host can then start it.
func testRecoverNeverStarted(t *testing.T, e *env) {
	a := e.launch(t)
	started := e.task(t, "sleep 30", SpecOptions{})
	start(t, a.rt, started)
	never := e.task(t, "exit 0", SpecOptions{})
	e.kill(a)

	b := e.launch(t)
	if got := recoverTasks(t, b.rt); len(got) != 0 {
		t.Errorf("Recover of no tasks returned %v; want nothing", got)
	}
	got := recoverTasks(t, b.rt, never, started)
	if _, ok := got[never.Name]; ok {
		t.Errorf("Recover reported never-started task %s as %s; want it left out", never.Name, describe(got[never.Name]))
	}
	if st, ok := got[started.Name]; len(got) != 1 || !ok || st.State.Running == nil {
		t.Errorf("Recover returned %v; want only %s, running", got, started.Name)
	}
	start(t, b.rt, never)
	exited(0).check(t, never.Name, waitTerminated(t, b.rt, never.Name, settleTimeout))
}

// testStartAfterRestart: a Start retried on a new instance (its first
// answer was lost with the old one) does not start a second copy.
func testStartAfterRestart(t *testing.T, e *env) {
	a := e.launch(t)
	task := e.task(t, "sleep 30", SpecOptions{})
	began := startedAt(start(t, a.rt, task))
	e.kill(a)

	b := e.launch(t)
	st := start(t, b.rt, task)
	if st.State.Running == nil || !startedAt(st).Equal(began) {
		t.Errorf("Start on a new instance returned %s, startedAt %v; want the task started at %v, still running",
			describe(st), startedAt(st), began)
	}
}
