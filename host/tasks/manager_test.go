package tasks

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

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/sdk"
)

// fakeRuntime is an in-memory runtime: tasks "run" until the test ends
// them with exit.
type fakeRuntime struct {
	pub sdk.Publisher

	mu       sync.Mutex
	tasks    map[string]sdk.TaskStatus
	starts   map[string]int
	recovers [][]string
	startErr error
	block    chan struct{} // when set, Start waits on it
	lists    int
	failed   int // Starts that returned startErr
	// slowEntered and slowRelease, when set, hold Validate of a spec whose
	// command is "slow": it says so on slowEntered, then waits for
	// slowRelease.
	slowEntered, slowRelease chan struct{}
}

// exitSilently ends a running task without publishing it: a lost event.
func (f *fakeRuntime) exitSilently(name string, code int32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tasks[name] = sdk.TaskStatus{Name: name, State: sdk.Terminated(code, 0, "", "", time.Now(), time.Now())}
}

func newFake() *fakeRuntime {
	return &fakeRuntime{tasks: map[string]sdk.TaskStatus{}, starts: map[string]int{}}
}

func (f *fakeRuntime) Init(context.Context, sdk.Config) (sdk.Info, error) {
	return sdk.Info{Name: "process", Kinds: []sdk.Kind{sdk.KindProcess}}, nil
}

func (f *fakeRuntime) Validate(ctx context.Context, spec sdk.TaskSpec) error {
	if spec.Process != nil && spec.Process.Command[0] == "refused" {
		return fmt.Errorf("refused by the runtime: %w", sdk.ErrInvalidSpec)
	}
	f.mu.Lock()
	entered, release := f.slowEntered, f.slowRelease
	f.mu.Unlock()
	if spec.Process != nil && spec.Process.Command[0] == "slow" && entered != nil {
		entered <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (f *fakeRuntime) Start(ctx context.Context, t sdk.Task) (sdk.TaskStatus, error) {
	f.mu.Lock()
	block, err := f.block, f.startErr
	if err != nil {
		f.failed++
	}
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return sdk.TaskStatus{}, ctx.Err()
		}
	}
	if err != nil {
		return sdk.TaskStatus{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.starts[t.Name]++
	if st, ok := f.tasks[t.Name]; ok {
		return st, nil
	}
	st := sdk.TaskStatus{Name: t.Name, State: sdk.Running(time.Now())}
	f.tasks[t.Name] = st
	return st, nil
}

// exit ends a running task and publishes it.
func (f *fakeRuntime) exit(name string, code int32) {
	f.mu.Lock()
	st := sdk.TaskStatus{Name: name, State: sdk.Terminated(code, 0, "", "", time.Now(), time.Now())}
	f.tasks[name] = st
	f.mu.Unlock()
	f.pub.Publish(st)
}

func (f *fakeRuntime) Stop(_ context.Context, name string, _ time.Duration) error {
	f.mu.Lock()
	st, ok := f.tasks[name]
	f.mu.Unlock()
	if !ok {
		return sdk.ErrNotFound
	}
	if !st.IsTerminal() {
		f.exit(name, 143)
	}
	return nil
}

func (f *fakeRuntime) Remove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.tasks, name)
	return nil
}

func (f *fakeRuntime) Status(_ context.Context, name string) (sdk.TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, ok := f.tasks[name]
	if !ok {
		return st, sdk.ErrNotFound
	}
	return st, nil
}

func (f *fakeRuntime) List(context.Context) ([]sdk.TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	var out []sdk.TaskStatus
	for _, st := range f.tasks {
		out = append(out, st)
	}
	return out, nil
}

func (f *fakeRuntime) Recover(_ context.Context, ts []sdk.Task) ([]sdk.TaskStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	var out []sdk.TaskStatus
	for _, t := range ts {
		names = append(names, t.Name)
		if st, ok := f.tasks[t.Name]; ok {
			out = append(out, st)
		}
	}
	f.recovers = append(f.recovers, names)
	return out, nil
}

func (f *fakeRuntime) Events(ctx context.Context) (<-chan sdk.TaskStatus, error) {
	return f.pub.Subscribe(ctx), nil
}

func (f *fakeRuntime) startCount(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.starts[name]
}

// fakeRuntimes serves one fake runtime named "process", which can be
// taken down and brought up again like a plugin.
type fakeRuntimes struct {
	mu sync.Mutex
	rt *fakeRuntime
	up bool
}

func (r *fakeRuntimes) Runtime(name string) (sdk.Info, sdk.Runtime, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	info := sdk.Info{Name: "process", Kinds: []sdk.Kind{sdk.KindProcess}}
	if name != "process" || !r.up {
		return info, nil, false
	}
	return info, r.rt, true
}

func (r *fakeRuntimes) Installed() []sdk.Info {
	return []sdk.Info{{Name: "process", Kinds: []sdk.Kind{sdk.KindProcess}}}
}

func (r *fakeRuntimes) Refused() map[string]string {
	return map[string]string{"tampered": "its SHA-256 differs"}
}

func (r *fakeRuntimes) Failing() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.up {
		return map[string]string{"process": "the fake is down"}
	}
	return map[string]string{"broken": "exec: no shim"}
}

// env is a controller on a fake runtime, with the event pump a dispatcher
// would run.
type env struct {
	t     *testing.T
	dir   string
	rts   *fakeRuntimes
	c     *Manager
	stopE context.CancelFunc
}

func newEnv(t *testing.T, dir string, rt *fakeRuntime, cfg Config) *env {
	t.Helper()
	st, err := store.Open(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close) // after the controller's, registered below
	rts := &fakeRuntimes{rt: rt, up: true}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = 20 * time.Millisecond
	}
	c, err := New(cfg, st, rts, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	c.Run()
	e := &env{t: t, dir: dir, rts: rts, c: c}
	e.up(rt)
	t.Cleanup(e.close)
	return e
}

// up brings rt up as the runtime, as the dispatcher does after a
// (re)start.
func (e *env) up(rt *fakeRuntime) {
	ctx, cancel := context.WithCancel(context.Background())
	e.rts.mu.Lock()
	e.rts.rt, e.rts.up = rt, true
	e.rts.mu.Unlock()
	ch, _ := rt.Events(ctx)
	e.stopE = cancel
	go func() {
		for st := range ch {
			e.c.Report("process", st)
		}
	}()
	e.c.RuntimeUp("process", rt)
}

func (e *env) down() {
	e.stopE()
	e.rts.mu.Lock()
	e.rts.up = false
	e.rts.mu.Unlock()
	e.c.RuntimeDown("process")
}

func (e *env) close() {
	if e.stopE != nil {
		e.stopE()
	}
	e.c.Close()
}

func (e *env) create(name string, cmd ...string) {
	e.t.Helper()
	if len(cmd) == 0 {
		cmd = []string{"sleep", "1"}
	}
	if _, err := e.c.Create(context.Background(), NewTask{Name: name, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: cmd}}}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (e *env) state(name string) string {
	t, ok := e.c.Get(name)
	switch {
	case !ok:
		return "gone"
	case t.State.Terminated != nil:
		return fmt.Sprintf("terminated:%d", t.State.Terminated.ExitCode)
	case t.State.Running != nil:
		return "running"
	case t.State.Waiting != nil:
		return "waiting:" + t.State.Waiting.Reason
	}
	return "none"
}

func TestCreateRunExitPersists(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("a")
	e.waitFor("running", func() bool { return e.state("a") == "running" })
	rt.exit("a", 3)
	e.waitFor("terminated", func() bool { return e.state("a") == "terminated:3" })
	e.waitFor("the final state on disk", func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dir, "a", store.RecordFile))
		return strings.Contains(string(b), `"exitCode":3`)
	})
	// A late "running" from the runtime must not move the task back.
	e.c.Report("process", sdk.TaskStatus{Name: "a", State: sdk.Running(time.Now())})
	if got := e.state("a"); got != "terminated:3" {
		t.Fatalf("a late event moved the task to %s", got)
	}
	if n := rt.startCount("a"); n != 1 {
		t.Fatalf("started %d times", n)
	}
}

func TestRefusedSpecIsInvalid(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{})
	_, err := e.c.Create(context.Background(), NewTask{Name: "r", Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"refused"}}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "refused by the runtime") {
		t.Fatalf("got %v, want ErrInvalid with the runtime's message", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "r")); !os.IsNotExist(err) {
		t.Fatal("a refused task left a directory")
	}
}

func TestStartFailureIsRetried(t *testing.T) {
	rt := newFake()
	rt.startErr = fmt.Errorf("connection reset: %w", sdk.ErrUnavailable)
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("a")
	time.Sleep(50 * time.Millisecond) // a few failed attempts
	if got := e.state("a"); got != "waiting:Initialized" {
		t.Fatalf("state %s after failed starts", got)
	}
	rt.mu.Lock()
	rt.startErr = nil
	rt.mu.Unlock()
	e.waitFor("running after the retry", func() bool { return e.state("a") == "running" })
}

// TestReconcileCadence: failed starts are retried every retryInterval
// whatever the reconcile interval; the runtimes are listed (and a lost
// status change found) only every reconcile interval.
func TestReconcileCadence(t *testing.T) {
	for _, tc := range []struct {
		name      string
		interval  time.Duration
		wantLists bool
	}{
		{"short interval lists", 20 * time.Millisecond, true},
		{"long interval lists only at the start", time.Hour, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := newFake()
			rt.startErr = fmt.Errorf("connection reset: %w", sdk.ErrUnavailable)
			e := newEnv(t, t.TempDir(), rt, Config{ReconcileInterval: tc.interval})
			e.create("a")
			// The start runs beside the create's commit: it may not have
			// been tried yet.
			e.waitFor("a failed start", func() bool {
				rt.mu.Lock()
				defer rt.mu.Unlock()
				return rt.failed > 0
			})
			rt.mu.Lock()
			rt.startErr = nil
			rt.mu.Unlock()
			e.waitFor("running after the retry", func() bool { return e.state("a") == "running" })

			rt.mu.Lock()
			listsBefore := rt.lists
			rt.mu.Unlock()
			rt.exitSilently("a", 3)
			if tc.wantLists {
				e.waitFor("the lost exit found by a List", func() bool { return e.state("a") == "terminated:3" })
				return
			}
			// Three retry passes: none lists, so the lost exit stays unseen.
			time.Sleep(3*retryInterval + 100*time.Millisecond)
			rt.mu.Lock()
			lists := rt.lists - listsBefore
			rt.mu.Unlock()
			if lists != 0 || e.state("a") != "running" {
				t.Fatalf("with a reconcile interval of %s: %d Lists within %s, state %s", tc.interval, lists, 3*retryInterval, e.state("a"))
			}
		})
	}
}

func TestDeleteWhileStarting(t *testing.T) {
	rt := newFake()
	rt.block = make(chan struct{})
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("a")
	if err := e.c.Delete(context.Background(), "a", nil); err != nil {
		t.Fatal(err)
	}
	if tk, _ := e.c.Get("a"); tk.DeletionTimestamp == nil {
		t.Fatal("no deletionTimestamp while deleting")
	}
	close(rt.block) // the start completes; then the task must be stopped and removed
	e.waitFor("deletion", func() bool { return e.state("a") == "gone" })
	if _, err := rt.Status(context.Background(), "a"); !errors.Is(err, sdk.ErrNotFound) {
		t.Fatal("the runtime still holds the deleted task")
	}
	if _, err := os.Stat(filepath.Join(e.dir, "a")); !os.IsNotExist(err) {
		t.Fatal("the deleted task's directory is still there")
	}
}

func TestDeleteQueuedNeedsNoRuntime(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{MaxConcurrent: 1})
	e.create("first")
	e.create("queued")
	e.waitFor("queued", func() bool { return e.state("queued") == "waiting:Queued" })
	e.down()
	if err := e.c.Delete(context.Background(), "queued", nil); err != nil {
		t.Fatal(err)
	}
	e.waitFor("deletion with the runtime down", func() bool { return e.state("queued") == "gone" })
	e.up(rt)
	e.create("later")
	rt.exit("first", 0)
	// Tasks start in creation order: once "later" runs, "queued" would
	// have been started already had it survived its deletion.
	e.waitFor("later running", func() bool { return e.state("later") == "running" })
	if rt.startCount("queued") != 0 {
		t.Fatal("a task deleted before it started was started")
	}
}

func TestHostRestartRecovers(t *testing.T) {
	dir := t.TempDir()
	rt := newFake()
	e := newEnv(t, dir, rt, Config{})
	e.create("done")
	e.create("running")
	e.waitFor("both running", func() bool { return e.state("done") == "running" && e.state("running") == "running" })
	rt.exit("done", 0)
	e.waitFor("done", func() bool { return e.state("done") == "terminated:0" })
	e.close()

	// Between the two hosts: "running" ends unobserved, and a record
	// exists for a task whose start never reached the runtime.
	rt.exit("running", 7)
	st, _ := store.Open(dir, hclog.NewNullLogger())
	defer st.Close()
	commit, err := st.Create(store.Record{Name: "never", Runtime: "process", CreatedAt: time.Now(),
		Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"x"}}}, State: sdk.Waiting(sdk.ReasonInitialized, "")})
	if err == nil {
		err = commit()
	}
	if err != nil {
		t.Fatal(err)
	}

	e2 := newEnv(t, dir, rt, Config{})
	e2.waitFor("recovered states", func() bool {
		return e2.state("running") == "terminated:7" && e2.state("never") == "running" && e2.state("done") == "terminated:0"
	})
	rt.mu.Lock()
	asked := rt.recovers[len(rt.recovers)-1]
	rt.mu.Unlock()
	if strings.Contains(strings.Join(asked, ","), "done") {
		t.Fatalf("Recover was asked about a terminated task: %v", asked)
	}
	if rt.startCount("running") != 1 || rt.startCount("never") != 1 {
		t.Fatalf("starts: running %d, never %d; want 1 each", rt.startCount("running"), rt.startCount("never"))
	}
}

func TestPluginRestartRecovers(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("a")
	e.create("b")
	e.waitFor("running", func() bool { return e.state("a") == "running" && e.state("b") == "running" })
	e.down()
	rt.exit("a", 5) // unobserved: no subscriber while down
	e.up(rt)
	e.waitFor("a's exit after recovery", func() bool { return e.state("a") == "terminated:5" })
	if e.state("b") != "running" || rt.startCount("b") != 1 {
		t.Fatalf("b: %s, started %d times", e.state("b"), rt.startCount("b"))
	}
}

func TestMaxConcurrent(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{MaxConcurrent: 2})
	for i := 0; i < 5; i++ {
		e.create(fmt.Sprintf("t%d", i))
	}
	e.waitFor("two running", func() bool { return e.state("t0") == "running" && e.state("t1") == "running" })
	for i := 2; i < 5; i++ {
		if got := e.state(fmt.Sprintf("t%d", i)); got != "waiting:Queued" {
			t.Fatalf("t%d: %s, want queued", i, got)
		}
	}
	rt.exit("t1", 0)
	e.waitFor("t2 started in order", func() bool { return e.state("t2") == "running" })
	if e.state("t3") != "waiting:Queued" {
		t.Fatalf("t3 overtook: %s", e.state("t3"))
	}
}

// TestSyncKeepsATaskWhoseSpecChanged: a setTasks that lists a task with
// another spec keeps the task as it is and notes it on the task, and
// applies the rest; the same spec again clears the note.
func TestSyncKeepsATaskWhoseSpecChanged(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("keep", "sleep")
	e.create("other")
	spec := func(cmd string) sdk.TaskSpec { return sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{cmd}}} }
	if _, err := e.c.Sync(context.Background(), []NewTask{{Name: "keep", Spec: spec("different")}, {Name: "new", Spec: spec("sleep")}}); err != nil {
		t.Fatal(err)
	}
	keep, _ := e.c.Get("keep")
	if keep.Spec.Process.Command[0] != "sleep" || !strings.Contains(keep.Message, "another spec") {
		t.Fatalf("keep: %+v, message %q", keep.Spec.Process, keep.Message)
	}
	if _, ok := e.c.Get("new"); !ok {
		t.Fatal("the rest of the list was not applied: no task new")
	}
	e.waitFor("other deleted", func() bool { return e.state("other") == "gone" })
	if _, err := e.c.Sync(context.Background(), []NewTask{{Name: "keep", Spec: spec("sleep")}, {Name: "new", Spec: spec("sleep")}}); err != nil {
		t.Fatal(err)
	}
	if keep, _ := e.c.Get("keep"); keep.Message != "" {
		t.Fatalf("the note stayed once the spec agreed: %q", keep.Message)
	}
}

// BenchmarkReportToVisible: a status event applied until Get shows it,
// with 1,000 tasks in the table.
func BenchmarkReportToVisible(b *testing.B) {
	rt := newFake()
	st, err := store.Open(b.TempDir(), hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	c, err := New(Config{ReconcileInterval: time.Hour}, st, &fakeRuntimes{rt: rt, up: true}, hclog.NewNullLogger())
	if err != nil {
		b.Fatal(err)
	}
	c.Run()
	b.Cleanup(c.Close)
	c.RuntimeUp("process", rt)
	const n = 1000
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("t%04d", i)
		names = append(names, name)
		if _, err := c.Create(context.Background(), NewTask{Name: name, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sleep"}}}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := names[i%n]
		state := sdk.Running(time.Now())
		if i >= n {
			state = sdk.Terminated(0, 0, "", "", time.Now(), time.Now())
		}
		c.Report("process", sdk.TaskStatus{Name: name, State: state})
		if t, _ := c.Get(name); t.State.Running == nil && t.State.Terminated == nil {
			b.Fatalf("task %s not updated", name)
		}
	}
}

func TestMaxTasks(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{MaxTasks: 2})
	e.create("a")
	e.create("b")
	spec := sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sleep", "1"}}}
	_, err := e.c.Create(context.Background(), NewTask{Name: "c", Spec: spec})
	if !errors.Is(err, ErrTooMany) || !strings.Contains(err.Error(), "--max-tasks") {
		t.Fatalf("a third task: got %v, want ErrTooMany naming --max-tasks", err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "c")); !os.IsNotExist(err) {
		t.Fatalf("the refused task left a directory: %v", err)
	}
	three := []NewTask{{Name: "a", Spec: spec}, {Name: "x", Spec: spec}, {Name: "y", Spec: spec}}
	if _, err := e.c.Sync(context.Background(), three); !errors.Is(err, ErrTooMany) {
		t.Fatalf("setTasks of 3: got %v, want ErrTooMany", err)
	}
	if ts := e.c.List(); len(ts) != 2 || ts[0].DeletionTimestamp != nil || ts[1].DeletionTimestamp != nil {
		t.Fatalf("a refused setTasks changed the tasks: %+v", ts)
	}
	// Replacing the whole set within the limit is allowed.
	if _, err := e.c.Sync(context.Background(), three[1:]); err != nil {
		t.Fatal(err)
	}
}

func TestRefusedRuntimeSaysWhy(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{})
	_, err := e.c.Create(context.Background(), NewTask{Name: "r", Spec: sdk.TaskSpec{
		Runtime: "tampered", Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "refused: its SHA-256 differs") {
		t.Fatalf("got %v, want ErrInvalid saying the plugin was refused and why", err)
	}
}

// TestUnknownRuntimeSaysWhichPluginsAreDown: a runtime nobody has is a
// 400 that lists the installed ones and the plugins that never came up,
// by their files and why: one of them may be the runtime asked for.
func TestUnknownRuntimeSaysWhichPluginsAreDown(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{})
	_, err := e.c.Create(context.Background(), NewTask{Name: "u", Spec: sdk.TaskSpec{
		Runtime: "bwrap", Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "installed: [process]") || !strings.Contains(err.Error(), "broken: exec: no shim") {
		t.Fatalf("got %v, want ErrInvalid naming the installed runtimes and the plugin that is down", err)
	}
}

// TestSidecarModeRefusesTheProcessRuntime: in sidecar mode no caller (a
// task in the main container, say) may ask for a task in the executor's
// own container, with its privileges.
func TestSidecarModeRefusesTheProcessRuntime(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{SidecarMode: true})
	_, err := e.c.Create(context.Background(), NewTask{Name: "escape", Spec: sdk.TaskSpec{
		Runtime: "process", Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "off in sidecar mode") {
		t.Fatalf("got %v, want ErrInvalid saying the process runtime is off in sidecar mode", err)
	}
	if _, ok := e.c.Get("escape"); ok {
		t.Fatal("the refused task was kept")
	}
}

// TestAwaitRecovered: the wait the host makes before it serves ends when
// every runtime named has recovered its tasks, and not before; a runtime
// that never comes up keeps it waiting until the context ends.
func TestAwaitRecovered(t *testing.T) {
	for _, c := range []struct {
		name  string
		await []string
		want  bool
	}{
		{"the runtime that comes up", []string{"process"}, true},
		{"none", nil, true},
		{"one that never comes up too", []string{"process", "cri"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			st, err := store.Open(t.TempDir(), hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(st.Close)
			rt := newFake()
			ctl, err := New(Config{ReconcileInterval: time.Hour}, st, &fakeRuntimes{rt: rt, up: true}, hclog.NewNullLogger())
			if err != nil {
				t.Fatal(err)
			}
			ctl.Run()
			t.Cleanup(ctl.Close)
			done := make(chan bool)
			ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
			defer cancel()
			go func() { done <- ctl.AwaitRecovered(ctx, c.await) }()
			if len(c.await) > 0 {
				select {
				case got := <-done:
					t.Fatalf("returned %v before any runtime came up", got)
				case <-time.After(50 * time.Millisecond):
				}
			}
			ctl.RuntimeUp("process", rt)
			if got := <-done; got != c.want {
				t.Fatalf("AwaitRecovered = %v, want %v", got, c.want)
			}
		})
	}
}

func TestDefaultRuntime(t *testing.T) {
	cases := []struct {
		name               string
		cfg                Config
		process, container string
	}{
		{"built-in", Config{}, "process", "cri"},
		{"sidecar mode", Config{SidecarMode: true}, "nsenter", "cri"},
		{"the operator's for process tasks", Config{DefaultRuntimes: map[sdk.Kind]string{sdk.KindProcess: "bwrap"}}, "bwrap", "cri"},
		{"the operator's win over sidecar mode's", Config{SidecarMode: true, DefaultRuntimes: map[sdk.Kind]string{sdk.KindProcess: "bwrap", sdk.KindContainer: "kata"}}, "bwrap", "kata"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.cfg.DefaultRuntime(sdk.KindProcess); got != tc.process {
				t.Errorf("process tasks on %q, want %q", got, tc.process)
			}
			if got := tc.cfg.DefaultRuntime(sdk.KindContainer); got != tc.container {
				t.Errorf("container tasks on %q, want %q", got, tc.container)
			}
		})
	}
}
