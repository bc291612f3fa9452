// Package reconcile holds the host's table of tasks and moves every task
// through its life: it hands new tasks to their runtime (in creation order,
// within --max-concurrent-tasks), applies the status changes runtimes push,
// carries out deletions, re-adopts tasks after a restart of the host or of a
// plugin, and periodically compares its view with each runtime's as a
// safety net for a lost event.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/sdk"
)

// Runtimes is how the controller reaches runtime plugins (package dispatch).
type Runtimes interface {
	// Runtime returns what the named runtime said of itself and, if its
	// plugin is up, the runtime.
	Runtime(name string) (sdk.Info, sdk.Runtime, bool)
	// Installed lists every runtime found, up or not.
	Installed() []sdk.Info
	// Refused maps the runtimes whose plugins were refused to the reason.
	Refused() map[string]string
	// Failing maps the runtimes whose plugins are not up to why.
	Failing() map[string]string
}

// Config tunes the controller.
type Config struct {
	// SidecarMode runs process specs on the nsenter runtime.
	SidecarMode bool
	// ContainerMode allows container specs.
	ContainerMode bool
	// MaxConcurrent caps the tasks running at once; 0 means no cap.
	MaxConcurrent int
	// GracePeriod is the default grace period of a deletion.
	GracePeriod time.Duration
	// ReconcileInterval is how often the controller compares its view with
	// the runtimes' (a safety net for lost status changes, which runtimes
	// push); 0 means DefaultReconcileInterval.
	ReconcileInterval time.Duration
	// Metrics, when not nil, receives task starts and terminations.
	Metrics *metrics.Metrics
	// MaxTasks caps the tasks known at once (and so the tasks one setTasks
	// may list); 0 means no cap.
	MaxTasks int
	// Downward are the fields of the executor's pod a task's env may name
	// (valueFrom.fieldRef).
	Downward Downward
	// Stuck, when set, is told of a runtime whose plugin did not answer a
	// call in time, and why (the dispatcher restarts it).
	Stuck func(runtime, why string)
	// DefaultRuntimes are the operator's runtimes for tasks whose spec
	// names none, by kind; a kind not in it gets the built-in default
	// (see DefaultRuntime).
	DefaultRuntimes map[sdk.Kind]string
}

// DefaultRuntime is the runtime a task of kind runs on when its spec names
// none: the operator's (DefaultRuntimes), else process tasks on process
// (nsenter in sidecar mode) and container tasks on cri.
func (cfg Config) DefaultRuntime(kind sdk.Kind) string {
	if name := cfg.DefaultRuntimes[kind]; name != "" {
		return name
	}
	switch kind {
	case sdk.KindProcess:
		if cfg.SidecarMode {
			return "nsenter"
		}
		return "process"
	case sdk.KindContainer:
		return "cri"
	}
	return ""
}

// DefaultReconcileInterval is the ReconcileInterval of a zero Config.
const DefaultReconcileInterval = 10 * time.Second

// Task is a task as the API shows it.
type Task struct {
	Name                string
	Spec                sdk.TaskSpec
	Runtime             string
	CreatedAt           time.Time
	DeletionTimestamp   *time.Time
	DeletionGracePeriod time.Duration
	State               corev1.ContainerState
	// Message says what the state does not (a setTasks that listed the
	// task with another spec).
	Message string
	// Format is the format the task was created in (store.Record.Format).
	Format string
}

// NewTask is a task a client asks for.
type NewTask struct {
	Name string
	Spec sdk.TaskSpec
	// Format is the format it came in (store.FormatNested or FormatCompat).
	Format string
}

// phase is where a task is in its hand-over to the runtime.
type phase int

const (
	// phaseUnknown: loaded from disk, or a Start whose outcome was lost;
	// the runtime must be asked (Recover) before anything else.
	phaseUnknown phase = iota
	// phasePending: not handed to the runtime; waits in c.pending.
	phasePending
	// phaseStarting: a Start call is in flight.
	phaseStarting
	// phaseStarted: the runtime has the task.
	phaseStarted
	// phaseDone: the task has terminated.
	phaseDone
)

type entry struct {
	rec   store.Record
	seq   uint64 // creation order
	phase phase
	// retryAt delays the next Start after a failed one.
	retryAt time.Time
	// maybeStarted is set once a Start has been sent: from then on only the
	// runtime can say whether the task runs.
	maybeStarted bool
	// deleteActive is set while a goroutine carries out the deletion.
	deleteActive bool
	// marking is set while a deletion is being recorded on disk, and
	// closed once that is over, whether it succeeded or not.
	marking chan struct{}
	// dirty is set while a write of the record is queued.
	dirty bool
	// ioMu orders the write of the final state against the removal of the
	// task's directory; removed is set (under it) once the directory is
	// gone.
	ioMu    sync.Mutex
	removed bool
	// ended is closed once the task has terminated or is gone, for the
	// clients waiting for that.
	ended chan struct{}
	// startCounted is set once the task's start is in the metrics, or
	// will never be (see observeLocked).
	startCounted bool
	// committed, for a task created by Create, is closed once its record
	// is durable or its creation was taken back.
	committed chan struct{}
	// specMismatch, when set, says that the last setTasks listed the task
	// with another spec than it has (it keeps its own).
	specMismatch string
}

// end closes e.ended, once.
func (e *entry) end() {
	select {
	case <-e.ended:
	default:
		close(e.ended)
	}
}

func (e *entry) view() Task {
	r := e.rec
	return Task{
		Name: r.Name, Spec: r.Spec, Runtime: r.Runtime, CreatedAt: r.CreatedAt,
		DeletionTimestamp: r.DeletionTimestamp, DeletionGracePeriod: r.DeletionGracePeriod, State: r.State,
		Message: e.specMismatch, Format: r.Format,
	}
}

// runtimeState is the controller's view of one runtime.
type runtimeState struct {
	rt sdk.Runtime
	// epoch counts the runtime's (re)starts; work begun under an older epoch
	// was done with a plugin that has since gone.
	epoch uint64
	// recovered is false until Recover has succeeded for this epoch;
	// nothing is started on the runtime before.
	recovered bool
	// recovering is set while a Recover runs.
	recovering bool
}

// Manager owns the task table.
type Manager struct {
	cfg      Config
	log      hclog.Logger
	store    *store.Store
	runtimes Runtimes

	// opMu orders mutations: single-task ones share it, a setTasks takes it
	// alone so that it sees and changes the table as one.
	opMu sync.RWMutex

	mu       sync.Mutex
	tasks    map[string]*entry
	reserved map[string]bool // names being created
	pending  []*entry        // phasePending, in creation order
	active   int             // tasks handed to a runtime and not terminated
	seq      uint64
	rts      map[string]*runtimeState
	// recoveries is closed, and replaced, whenever a runtime has recovered
	// its tasks (see AwaitRecovered).
	recoveries chan struct{}

	persistQ chan *entry
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	// answered is when each kind of call to each runtime was last
	// answered (see call).
	answeredMu sync.Mutex
	answered   map[string]time.Time
}

// New loads the store and returns a controller. Call Run to start its
// background work.
func New(cfg Config, st *store.Store, rts Runtimes, log hclog.Logger) (*Manager, error) {
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	recs, err := st.Load()
	if err != nil {
		return nil, err
	}
	// A task whose record cannot be read is nobody's any more: none of
	// its processes may go on running unmanaged.
	for _, dir := range st.Quarantined() {
		if fi, err := os.Lstat(dir); err == nil && fi.IsDir() {
			if n := killHolders(dir); n > 0 {
				log.Warn("killed the processes of a quarantined task", "path", dir, "killed", n)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Manager{
		cfg: cfg, log: log, store: st, runtimes: rts,
		tasks: map[string]*entry{}, reserved: map[string]bool{}, rts: map[string]*runtimeState{},
		persistQ: make(chan *entry, 1024), ctx: ctx, cancel: cancel,
		recoveries: make(chan struct{}),
	}
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].CreatedAt.Equal(recs[j].CreatedAt) {
			return recs[i].CreatedAt.Before(recs[j].CreatedAt)
		}
		return recs[i].Name < recs[j].Name
	})
	for _, r := range recs {
		c.seq++
		e := &entry{rec: r, seq: c.seq, phase: phaseUnknown, ended: make(chan struct{}), startCounted: true}
		if r.State.Terminated != nil {
			e.phase = phaseDone
			e.end()
		}
		c.tasks[r.Name] = e
	}
	log.Info("loaded the task store", "tasks", len(recs), "dir", st.Root())
	return c, nil
}

// Run starts the controller's background work; it stops when Close is
// called.
func (c *Manager) Run() {
	workers := 8
	for i := 0; i < workers; i++ {
		c.wg.Add(1)
		go c.persister()
	}
	c.wg.Add(1)
	go c.loop()
	c.mu.Lock()
	for _, e := range c.tasks {
		if e.rec.DeletionTimestamp != nil {
			c.scheduleDeleteLocked(e)
		}
	}
	c.mu.Unlock()
}

// Close stops the background work after the queued writes are done. Tasks
// keep running in their runtimes.
func (c *Manager) Close() {
	c.cancel()
	c.wg.Wait()
	// Write what the persisters did not get to.
	c.mu.Lock()
	var dirty []*entry
	for _, e := range c.tasks {
		if e.dirty {
			dirty = append(dirty, e)
		}
	}
	c.mu.Unlock()
	for _, e := range dirty {
		c.persistOne(e)
	}
}

// Get returns a task.
func (c *Manager) Get(name string) (Task, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tasks[name]
	if !ok {
		return Task{}, false
	}
	return e.view(), true
}

// Await returns a task and a channel that is closed once the task has
// terminated or is gone.
func (c *Manager) Await(name string) (Task, <-chan struct{}, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tasks[name]
	if !ok {
		return Task{}, nil, false
	}
	return e.view(), e.ended, true
}

// List returns every task, sorted by name.
func (c *Manager) List() []Task {
	c.mu.Lock()
	out := make([]Task, 0, len(c.tasks))
	for _, e := range c.tasks {
		out = append(out, e.view())
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// resolveRuntime picks the runtime for a spec and checks it is installed
// and runs specs of that kind.
func (c *Manager) resolveRuntime(spec sdk.TaskSpec) (string, error) {
	kind := spec.Kind()
	if kind == sdk.KindContainer && !c.cfg.ContainerMode && spec.Runtime == "" && c.cfg.DefaultRuntimes[kind] == "" {
		return "", fmt.Errorf("container tasks need container mode: start the executor with --enable-container-mode (or ENABLE_CONTAINER_MODE=true): %w", ErrInvalid)
	}
	name := spec.Runtime
	if name == "process" && c.cfg.SidecarMode {
		return "", fmt.Errorf("runtime %q is off in sidecar mode: it would run the task in the executor's own container, with the executor's privileges, not in the main container: %w", name, ErrInvalid)
	}
	if name == "" {
		name = c.cfg.DefaultRuntime(kind)
	}
	installed := c.runtimes.Installed()
	var names []string
	for _, info := range installed {
		names = append(names, info.Name)
		if info.Name != name {
			continue
		}
		for _, k := range info.Kinds {
			if k == kind {
				return name, nil
			}
		}
		return "", fmt.Errorf("runtime %q does not run %s tasks: %w", name, kind, ErrInvalid)
	}
	if reason, ok := c.runtimes.Refused()[name]; ok {
		return "", fmt.Errorf("runtime %q is unavailable: its plugin was refused: %s: %w", name, reason, ErrInvalid)
	}
	// A runtime the executor has but cannot start is the node's problem,
	// not the client's: retry, and see why.
	if reason, ok := c.runtimes.Failing()[name]; ok {
		return "", fmt.Errorf("runtime %q cannot start: %s: %w", name, reason, ErrUnavailable)
	}
	sort.Strings(names)
	// A plugin that never came up is known by its file's name only, which
	// need not be its runtime's: say why it is down, since it may be the
	// one asked for.
	var down []string
	for file, why := range c.runtimes.Failing() {
		down = append(down, fmt.Sprintf("%s: %s", file, why))
	}
	if len(down) > 0 {
		sort.Strings(down)
		return "", fmt.Errorf("runtime %q is not installed (installed: %v; plugins that are not up, named by their files: %s): %w", name, names, strings.Join(down, "; "), ErrInvalid)
	}
	return "", fmt.Errorf("runtime %q is not installed (installed: %v): %w", name, names, ErrInvalid)
}

// admit resolves and validates a new task with its runtime.
func (c *Manager) admit(ctx context.Context, t NewTask, now time.Time) (store.Record, error) {
	name, err := c.resolveRuntime(t.Spec)
	if err != nil {
		return store.Record{}, fmt.Errorf("task %q: %w", t.Name, err)
	}
	info, rt, up := c.runtimes.Runtime(name)
	// Options are the runtime's to check, whatever it says of the rest.
	options := len(t.Spec.RuntimeOptions) > 0
	if !info.NoValidate || options {
		if !up {
			why := "it is restarting"
			if reason, ok := c.runtimes.Failing()[name]; ok {
				why = reason
			}
			return store.Record{}, fmt.Errorf("task %q: runtime %q is not running right now (%s); retry shortly: %w", t.Name, name, why, ErrUnavailable)
		}
		if options && !info.RuntimeOptions {
			return store.Record{}, fmt.Errorf("task %q: runtime %q takes no runtime options (spec.runtimeOptions): %w", t.Name, name, ErrInvalid)
		}
		// A reference that cannot be resolved is the task's StartError, not
		// the request's: the runtime checks the rest.
		spec, _ := resolveEnv(t.Spec, c.cfg.Downward)
		err := c.call(ctx, name, "Validate", validateTimeout, func(ctx context.Context) error { return rt.Validate(ctx, spec) })
		if err != nil {
			if errors.Is(err, sdk.ErrInvalidSpec) {
				return store.Record{}, fmt.Errorf("task %q: %v: %w", t.Name, err, ErrInvalid)
			}
			return store.Record{}, fmt.Errorf("task %q: runtime %q could not check the spec: %v: %w", t.Name, name, err, ErrUnavailable)
		}
	}
	return store.Record{
		Name: t.Name, Spec: t.Spec, Runtime: name, CreatedAt: now, Format: t.Format,
		State: sdk.Waiting(sdk.ReasonInitialized, ""),
	}, nil
}

// Create creates one task and returns it as it is once its creation is
// durable (running, or even terminated, if its runtime was quick).
func (c *Manager) Create(ctx context.Context, t NewTask) (Task, error) {
	c.opMu.RLock()
	defer c.opMu.RUnlock()
	c.mu.Lock()
	if _, ok := c.tasks[t.Name]; ok || c.reserved[t.Name] {
		c.mu.Unlock()
		return Task{}, fmt.Errorf("task %q: %w", t.Name, ErrExists)
	}
	// Tasks being deleted count: their processes and files are still there.
	if n := len(c.tasks) + len(c.reserved); c.cfg.MaxTasks > 0 && n >= c.cfg.MaxTasks {
		c.mu.Unlock()
		return Task{}, fmt.Errorf("task %q: the executor already keeps %d tasks, its limit (--max-tasks); delete some first: %w", t.Name, n, ErrTooMany)
	}
	c.reserved[t.Name] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.reserved, t.Name)
		c.mu.Unlock()
	}()

	rec, err := c.admit(ctx, t, time.Now())
	if err != nil {
		return Task{}, err
	}
	commit, err := c.store.Create(rec)
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			return Task{}, fmt.Errorf("task %q: %w", t.Name, ErrExists)
		}
		return Task{}, err
	}
	// The task starts while its record is made durable: the start does not
	// wait for the disk, the answer to the client does.
	committed := make(chan struct{})
	c.mu.Lock()
	e := c.insertLocked(rec)
	e.committed = committed
	c.pumpLocked()
	c.mu.Unlock()
	err = commit()
	if err != nil {
		c.abandon(e)
	}
	close(committed)
	if err != nil {
		return Task{}, err
	}
	testHookCommitted(t.Name)
	// The task as it is now, as setTasks answers: a short task may have
	// run to its end while its record was made durable, and its creator
	// learns so without asking again.
	c.mu.Lock()
	v := e.view()
	c.mu.Unlock()
	return v, nil
}

// testHookCommitted lets tests act between a create's commit and its
// answer.
var testHookCommitted = func(string) {}

// abandon takes back a task whose creation could not be made durable: it is
// deleted at once, with no grace period.
func (c *Manager) abandon(e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	e.rec.DeletionTimestamp = &now
	e.rec.DeletionGracePeriod = 0
	c.scheduleDeleteLocked(e)
}

func (c *Manager) insertLocked(rec store.Record) *entry {
	c.seq++
	e := &entry{rec: rec, seq: c.seq, phase: phasePending, ended: make(chan struct{})}
	c.tasks[rec.Name] = e
	c.pending = append(c.pending, e)
	return e
}

// Delete accepts the deletion of a task; the task is stopped and removed in
// the background. grace nil means the default grace period. Deleting a task
// that is already being deleted is not an error.
func (c *Manager) Delete(ctx context.Context, name string, grace *time.Duration) error {
	c.opMu.RLock()
	defer c.opMu.RUnlock()
	c.mu.Lock()
	e, ok := c.tasks[name]
	if !ok {
		c.mu.Unlock()
		return fmt.Errorf("task %q: %w", name, ErrNotFound)
	}
	// The table shows a new task before its record is durable. Its
	// deletion waits for that: removing the directory under the commit
	// failed a creation that had taken place (a 500 to its client, found
	// by the chaos test in host/e2e).
	if ch := e.committed; ch != nil {
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("while waiting for the creation of task %q: %w", name, ctx.Err())
		}
		c.mu.Lock()
		if c.tasks[name] != e {
			c.mu.Unlock()
			return fmt.Errorf("task %q: %w", name, ErrNotFound)
		}
	}
	// A deletion being recorded by another request is waited for: it may
	// yet fail, and this request must not be acknowledged before the
	// deletion is durable.
	for e.marking != nil {
		ch := e.marking
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("while waiting for the deletion of task %q: %w", name, ctx.Err())
		}
		c.mu.Lock()
		if c.tasks[name] != e {
			c.mu.Unlock()
			return nil
		}
	}
	if e.rec.DeletionTimestamp != nil {
		c.mu.Unlock()
		return nil
	}
	marking := make(chan struct{})
	e.marking = marking
	c.mu.Unlock()

	d := c.deletion(name, grace, time.Now())
	err := c.store.MarkDeleted(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	e.marking = nil
	close(marking)
	if err != nil {
		return fmt.Errorf("while recording the deletion of task %q: %w", name, err)
	}
	c.applyMarkLocked(e, d)
	return nil
}

// deletion describes a deletion of name accepted at now.
func (c *Manager) deletion(name string, grace *time.Duration, now time.Time) store.Deletion {
	g := c.cfg.GracePeriod
	if grace != nil {
		g = *grace
	}
	return store.Deletion{Name: name, At: now, GracePeriod: g}
}

func (c *Manager) applyMarkLocked(e *entry, d store.Deletion) {
	at := d.At
	e.rec.DeletionTimestamp = &at
	e.rec.DeletionGracePeriod = d.GracePeriod
	c.scheduleDeleteLocked(e)
}

// Sync makes the set of tasks equal to desired: names not in it are
// deleted, new names are created, names with an identical spec are left
// alone. A name listed with another spec than its task has keeps its task
// as it is, and the task says so (Task.Message), as a controller that
// resends its whole list on every reconcile must not be blocked by one
// changed template. It changes nothing if a desired task is being deleted
// or cannot be admitted.
func (c *Manager) Sync(ctx context.Context, desired []NewTask) ([]Task, error) {
	// The set asked for is what the executor keeps afterwards, besides the
	// tasks on their way out.
	if c.cfg.MaxTasks > 0 && len(desired) > c.cfg.MaxTasks {
		return nil, fmt.Errorf("setTasks lists %d tasks, more than the executor's limit of %d (--max-tasks): %w", len(desired), c.cfg.MaxTasks, ErrTooMany)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()

	want := make(map[string]bool, len(desired))
	var creates []NewTask
	var mismatched, agreed []*entry
	c.mu.Lock()
	for _, t := range desired {
		want[t.Name] = true
		e, ok := c.tasks[t.Name]
		if !ok {
			creates = append(creates, t)
			continue
		}
		if !specEqual(e.rec.Spec, t.Spec) {
			mismatched = append(mismatched, e)
			continue
		}
		agreed = append(agreed, e)
		if e.rec.DeletionTimestamp != nil {
			c.mu.Unlock()
			return nil, fmt.Errorf("task %q is being deleted; send it again once it is gone: %w", t.Name, ErrConflict)
		}
	}
	var deletes []*entry
	for name, e := range c.tasks {
		// No single deletion is being recorded now: setTasks excludes
		// them (opMu).
		if !want[name] && e.rec.DeletionTimestamp == nil {
			deletes = append(deletes, e)
		}
	}
	c.mu.Unlock()

	now := time.Now()
	recs := make([]store.Record, 0, len(creates))
	for _, t := range creates {
		rec, err := c.admit(ctx, t, now)
		if err != nil {
			return nil, err
		}
		recs = append(recs, rec)
	}
	if len(recs) > 0 {
		commit, err := c.store.Create(recs...)
		if err != nil {
			return nil, err
		}
		if err := commit(); err != nil {
			for _, r := range recs {
				_ = c.store.Remove(r.Name)
			}
			return nil, err
		}
	}
	c.mu.Lock()
	marks := make([]store.Deletion, len(deletes))
	names := make([]string, len(deletes))
	for i, e := range deletes {
		e.marking = make(chan struct{})
		marks[i] = c.deletion(e.rec.Name, nil, now)
		names[i] = e.rec.Name
	}
	c.mu.Unlock()
	if err := c.store.MarkDeleted(marks...); err != nil {
		// Undo everything so the request changes nothing: the creates, and
		// the deletion marks that did reach the disk.
		for _, r := range recs {
			_ = c.store.Remove(r.Name)
		}
		if uerr := c.store.UnmarkDeleted(names...); uerr != nil {
			c.log.Error("cannot take back deletion marks; those tasks will be deleted at the next start", "error", uerr)
		}
		c.mu.Lock()
		for _, e := range deletes {
			close(e.marking)
			e.marking = nil
		}
		c.mu.Unlock()
		return nil, fmt.Errorf("while recording deletions: %w", err)
	}

	c.mu.Lock()
	for i, e := range deletes {
		close(e.marking)
		e.marking = nil
		c.applyMarkLocked(e, marks[i])
	}
	for _, r := range recs {
		c.insertLocked(r)
	}
	for _, e := range mismatched {
		if e.specMismatch != "" {
			continue // said at the first such call; repeating it changes nothing
		}
		e.specMismatch = "setTasks listed this task with another spec than it was created with (" + now.UTC().Format(time.RFC3339) +
			"); it keeps running as created: delete it (or leave it out of setTasks) to replace it"
	}
	for _, e := range agreed {
		e.specMismatch = ""
	}
	c.pumpLocked()
	c.mu.Unlock()
	return c.List(), nil
}

// pumpLocked hands pending tasks to their runtimes in creation order, as
// far as free slots allow, and labels the rest.
func (c *Manager) pumpLocked() {
	if c.ctx.Err() != nil {
		return // shutting down: start nothing new
	}
	now := time.Now()
	kept := c.pending[:0]
	slotsFull := false
	for _, e := range c.pending {
		rs := c.rts[e.rec.Runtime]
		ready := rs != nil && rs.recovered && !rs.recovering && !now.Before(e.retryAt)
		if !slotsFull && c.cfg.MaxConcurrent > 0 && c.active >= c.cfg.MaxConcurrent {
			slotsFull = true
		}
		switch {
		case e.rec.DeletionTimestamp != nil:
			// Deleted before it ever started: the deletion removes it.
			continue
		case slotsFull:
			c.setWaitingLocked(e, sdk.ReasonQueued,
				fmt.Sprintf("waiting for one of the %d task slots (--max-concurrent-tasks) to free", c.cfg.MaxConcurrent))
			kept = append(kept, e)
		case !ready:
			kept = append(kept, e)
		default:
			e.phase = phaseStarting
			e.maybeStarted = true
			c.active++
			c.wg.Add(1)
			go c.start(e, rs.rt, rs.epoch)
		}
	}
	for i := len(kept); i < len(c.pending); i++ {
		c.pending[i] = nil
	}
	c.pending = kept
}

func (c *Manager) setWaitingLocked(e *entry, reason, msg string) {
	if w := e.rec.State.Waiting; w != nil && w.Reason == reason && w.Message == msg {
		return
	}
	if e.rec.State.Running != nil || e.rec.State.Terminated != nil {
		return
	}
	e.rec.State = sdk.Waiting(reason, msg)
}

// start hands one task to its runtime.
func (c *Manager) start(e *entry, rt sdk.Runtime, epoch uint64) {
	defer c.wg.Done()
	c.mu.Lock()
	// The record keeps the spec as sent (valueFrom and all), so that the
	// same spec sent again compares equal; the runtime gets it resolved.
	spec, unresolved := resolveEnv(e.rec.Spec, c.cfg.Downward)
	task := sdk.Task{Name: e.rec.Name, Spec: spec, Dir: c.store.Dir(e.rec.Name)}
	c.mu.Unlock()
	var st sdk.TaskStatus
	var err error
	if unresolved != nil {
		err = fmt.Errorf("%v: %w", unresolved, sdk.ErrInvalidSpec)
	} else {
		err = c.call(c.ctx, e.rec.Runtime, "Start", startTimeout, func(ctx context.Context) error {
			var serr error
			st, serr = rt.Start(ctx, task)
			return serr
		})
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[task.Name] != e || e.phase != phaseStarting {
		return
	}
	rs := c.rts[e.rec.Runtime]
	if rs == nil || rs.epoch != epoch {
		// The plugin restarted meanwhile; its Recover decides.
		return
	}
	switch {
	case err == nil:
		e.phase = phaseStarted
		c.applyLocked(e, st.State)
	case errors.Is(err, sdk.ErrInvalidSpec):
		// The runtime will never run it: that is the task's end, as a
		// container that cannot be created is in Kubernetes.
		e.phase = phaseStarted
		now := time.Now()
		c.applyLocked(e, sdk.Terminated(128, 0, sdk.ReasonStartError, err.Error(), time.Time{}, now))
	default:
		// The outcome is unknown (the plugin may have died mid-call).
		// Start is idempotent, so ask again a little later.
		c.log.Warn("starting a task failed; will retry", "task", task.Name, "runtime", e.rec.Runtime, "error", err)
		c.active--
		e.phase = phasePending
		e.retryAt = time.Now().Add(time.Second)
		c.requeueLocked(e)
	}
	if e.rec.DeletionTimestamp != nil {
		c.scheduleDeleteLocked(e)
	}
}

// requeueLocked puts e back into the pending queue at its creation-order
// place.
func (c *Manager) requeueLocked(e *entry) {
	i := sort.Search(len(c.pending), func(i int) bool { return c.pending[i].seq > e.seq })
	c.pending = append(c.pending, nil)
	copy(c.pending[i+1:], c.pending[i:])
	c.pending[i] = e
}

// rank orders states so a late event cannot move a task backwards.
func rank(s corev1.ContainerState) int {
	switch {
	case s.Terminated != nil:
		return 2
	case s.Running != nil:
		return 1
	}
	return 0
}

// applyLocked records a state the runtime reported for e.
func (c *Manager) applyLocked(e *entry, s corev1.ContainerState) {
	cur := e.rec.State
	if cur.Terminated != nil || rank(s) < rank(cur) {
		return
	}
	if rank(s) == rank(cur) && rank(s) == 1 {
		return // running → running: nothing new
	}
	e.rec.State = s
	c.observeLocked(e, s)
	if s.Terminated == nil {
		return
	}
	if e.phase == phaseStarting || e.phase == phaseStarted {
		c.active--
	}
	e.phase = phaseDone
	// Only the final state is saved: it is what a crash must not lose. A
	// running state would be a hint at best (after a restart the runtime
	// is asked anyway), and writing it costs every task's start two
	// metadata operations on the disk. The write is queued before the
	// waiting clients are woken: Go runs the goroutine woken last first,
	// and the clients' answers are the ones someone waits for.
	c.persistLocked(e)
	e.end()
	c.pumpLocked()
}

// Observe applies a status a runtime pushed.
func (c *Manager) Observe(runtime string, st sdk.TaskStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tasks[st.Name]
	if !ok || e.rec.Runtime != runtime {
		return
	}
	// An event of an earlier task of the same name (deleted, then created
	// anew) can arrive once the new task is in the table. Until the new
	// task's own start has answered, a state from before its creation is
	// not its own: applied, it ended the new task with its predecessor's
	// "stopped on request" (found by TestConcurrentClients in host/e2e).
	if (e.phase == phasePending || e.phase == phaseStarting) && predates(st.State, e.rec.CreatedAt) {
		return
	}
	if e.phase == phaseUnknown {
		// The runtime knows the task, so it was started; Recover will say
		// the same.
		e.phase = phaseStarted
		c.active++
	}
	c.applyLocked(e, st.State)
}

// predates reports whether a runtime's state began (running) or ended
// (terminated) before t.
func predates(s corev1.ContainerState, t time.Time) bool {
	switch {
	case s.Running != nil:
		return !s.Running.StartedAt.IsZero() && s.Running.StartedAt.Time.Before(t)
	case s.Terminated != nil:
		return !s.Terminated.FinishedAt.IsZero() && s.Terminated.FinishedAt.Time.Before(t)
	}
	return false
}

// RuntimeUp is called when a runtime's plugin has (re)started: the
// controller re-adopts the runtime's tasks, then resumes starting tasks on
// it.
func (c *Manager) RuntimeUp(name string, rt sdk.Runtime) {
	c.mu.Lock()
	rs := c.rts[name]
	if rs == nil {
		rs = &runtimeState{}
		c.rts[name] = rs
	}
	rs.rt = rt
	rs.epoch++
	rs.recovered = false
	c.mu.Unlock()
	c.recover(name)
}

// AwaitRecovered returns once each of the named runtimes has recovered its
// tasks, or with false when ctx ends first. Until a runtime has, its
// running tasks show as they were recorded (waiting): the host serves only
// after, so that a client never sees a running task go back to waiting.
func (c *Manager) AwaitRecovered(ctx context.Context, names []string) bool {
	for {
		c.mu.Lock()
		all := true
		for _, n := range names {
			if rs := c.rts[n]; rs == nil || !rs.recovered {
				all = false
			}
		}
		note := c.recoveries
		c.mu.Unlock()
		if all {
			return true
		}
		select {
		case <-note:
		case <-ctx.Done():
			return false
		}
	}
}

// RuntimeDown is called when a runtime's plugin has gone.
func (c *Manager) RuntimeDown(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rs := c.rts[name]; rs != nil {
		rs.rt = nil
		rs.epoch++
		rs.recovered = false
	}
}

// recover asks a runtime about every unfinished task it may have.
func (c *Manager) recover(name string) {
	c.mu.Lock()
	rs := c.rts[name]
	if rs == nil || rs.rt == nil || rs.recovered || rs.recovering {
		c.mu.Unlock()
		return
	}
	rs.recovering = true
	rt, epoch := rs.rt, rs.epoch
	var tasks []sdk.Task
	var asked []*entry
	for _, e := range c.tasks {
		if e.rec.Runtime != name || e.phase == phaseDone || e.phase == phasePending {
			continue
		}
		spec, _ := resolveEnv(e.rec.Spec, c.cfg.Downward)
		tasks = append(tasks, sdk.Task{Name: e.rec.Name, Spec: spec, Dir: c.store.Dir(e.rec.Name)})
		asked = append(asked, e)
	}
	c.mu.Unlock()

	var sts []sdk.TaskStatus
	err := c.call(c.ctx, name, "Recover", recoverTimeout+time.Duration(len(tasks))*recoverPerTask, func(ctx context.Context) error {
		var rerr error
		sts, rerr = rt.Recover(ctx, tasks)
		return rerr
	})

	c.mu.Lock()
	defer c.mu.Unlock()
	rs.recovering = false
	if rs.epoch != epoch {
		return
	}
	if err != nil {
		c.log.Warn("recovering tasks failed; will retry", "runtime", name, "tasks", len(tasks), "error", err)
		return
	}
	found := make(map[string]sdk.TaskStatus, len(sts))
	for _, s := range sts {
		found[s.Name] = s
	}
	for _, e := range asked {
		if c.tasks[e.rec.Name] != e {
			continue
		}
		s, ok := found[e.rec.Name]
		switch {
		case ok:
			if e.phase != phaseStarted && e.phase != phaseDone {
				if e.phase != phaseStarting {
					c.active++
				}
				e.phase = phaseStarted
			}
			c.applyLocked(e, s.State)
		case e.phase == phaseUnknown || e.phase == phaseStarting || e.phase == phaseStarted:
			// Never started (or the start was lost): start it, in order.
			if e.phase != phaseUnknown {
				c.active--
			}
			e.phase = phasePending
			c.requeueLocked(e)
		}
	}
	rs.recovered = true
	close(c.recoveries)
	c.recoveries = make(chan struct{})
	c.log.Info("recovered tasks", "runtime", name, "asked", len(tasks), "found", len(sts))
	c.pumpLocked()
	for _, e := range c.tasks {
		if e.rec.Runtime == name && e.rec.DeletionTimestamp != nil {
			c.scheduleDeleteLocked(e)
		}
	}
}

// scheduleDeleteLocked carries out an accepted deletion in the background
// once the task is in a state that allows it.
func (c *Manager) scheduleDeleteLocked(e *entry) {
	if e.deleteActive || e.rec.DeletionTimestamp == nil {
		return
	}
	switch {
	case e.phase == phasePending && !e.maybeStarted:
		// Never handed to a runtime: nothing to stop.
		e.deleteActive = true
		c.wg.Add(1)
		go c.finishDelete(e, nil, 0)
		return
	case e.phase == phaseStarting:
		return // start() calls back once the runtime has answered
	case e.phase == phaseUnknown:
		return // recover() calls back once the runtime has answered
	}
	rs := c.rts[e.rec.Runtime]
	if rs == nil || rs.rt == nil || !rs.recovered {
		return // the runtime is down; recover() calls back
	}
	e.deleteActive = true
	c.wg.Add(1)
	go c.finishDelete(e, rs.rt, rs.epoch)
}

// forceDeleteLocked carries out a deletion its runtime has not carried out
// in time (its plugin stuck or down): the controller kills what it can
// reach of the task (killHolders), ends it as ContainerStatusUnknown unless
// it has ended, and removes it, so that an accepted deletion always
// completes.
func (c *Manager) forceDeleteLocked(e *entry) {
	e.deleteActive = true
	name, runtime := e.rec.Name, e.rec.Runtime
	c.wg.Add(1)
	go func() {
		killed := killHolders(c.store.Dir(name))
		c.log.Warn("the runtime did not carry out a deletion in time; the executor ended the task itself",
			"task", name, "runtime", runtime, "giveUpAfterGrace", deleteGiveUp.String(), "killedProcesses", killed)
		c.mu.Lock()
		msg := fmt.Sprintf("the %s runtime did not confirm the task's stop within its grace period and %s; the executor killed the %d processes it found in the task's directory",
			runtime, deleteGiveUp, killed)
		c.applyLocked(e, sdk.Terminated(137, 0, sdk.ReasonStatusUnknown, msg, time.Time{}, time.Now()))
		c.mu.Unlock()
		c.finishDelete(e, nil, 0)
	}()
}

// finishDelete stops the task (unless it has terminated), has the runtime
// release it and removes its directory.
func (c *Manager) finishDelete(e *entry, rt sdk.Runtime, epoch uint64) {
	defer c.wg.Done()
	c.mu.Lock()
	name, grace, terminated, runtime := e.rec.Name, e.rec.DeletionGracePeriod, e.rec.State.Terminated != nil, e.rec.Runtime
	c.mu.Unlock()
	fail := func(what string, err error) {
		c.log.Warn("deleting a task failed; will retry", "task", name, "step", what, "error", err)
		c.mu.Lock()
		e.deleteActive = false
		c.mu.Unlock()
	}
	if rt != nil {
		if !terminated {
			err := c.call(c.ctx, runtime, "Stop", grace+stopSlack, func(ctx context.Context) error { return rt.Stop(ctx, name, grace) })
			if err != nil && !errors.Is(err, sdk.ErrNotFound) {
				fail("stop", err)
				return
			}
		}
		if err := c.call(c.ctx, runtime, "Remove", removeTimeout, func(ctx context.Context) error { return rt.Remove(ctx, name) }); err != nil {
			fail("remove", err)
			return
		}
	}
	e.ioMu.Lock()
	err := c.store.Remove(name)
	e.removed = err == nil
	e.ioMu.Unlock()
	if err != nil {
		fail("remove files", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[name] == e {
		delete(c.tasks, name)
		e.end()
		if e.phase == phaseStarting || e.phase == phaseStarted {
			c.active--
		}
		for i, p := range c.pending {
			if p == e {
				c.pending = append(c.pending[:i], c.pending[i+1:]...)
				break
			}
		}
		c.pumpLocked()
	}
	c.log.Debug("task deleted", "task", name)
}

// persistLocked queues a write of e's record. Writes of the same task are
// coalesced: the writer always takes the newest record.
func (c *Manager) persistLocked(e *entry) {
	if e.dirty {
		return
	}
	e.dirty = true
	select {
	case c.persistQ <- e:
	default:
		// The queue is full: write from a goroutine of its own rather than
		// block the caller, which holds the table lock.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			select {
			case c.persistQ <- e:
			case <-c.ctx.Done(): // Close writes what is still dirty
			}
		}()
	}
}

func (c *Manager) persister() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case e := <-c.persistQ:
			c.persistOne(e)
		}
	}
}

func (c *Manager) persistOne(e *entry) {
	e.ioMu.Lock()
	defer e.ioMu.Unlock()
	c.mu.Lock()
	if e.removed || c.tasks[e.rec.Name] != e {
		c.mu.Unlock()
		return // deleted meanwhile
	}
	e.dirty = false
	rec := e.rec
	c.mu.Unlock()
	if rec.State.Terminated == nil {
		return
	}
	// Written at once (it survives any process's death from then on) and
	// synced in a batch with others within store.FlushInterval: one
	// journal commit for many final states, and none on the path of the
	// requests that do wait for theirs.
	if err := c.store.SetFinal(rec.Name, rec.State); err != nil {
		c.log.Error("cannot save a task's state; will retry", "task", rec.Name, "error", err)
		time.AfterFunc(time.Second, func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.ctx.Err() == nil {
				c.persistLocked(e)
			}
		})
	}
}

// retryInterval is how often the controller retries what failed (starts,
// recoveries of plugins, deletions). The comparison with the runtimes runs
// only every ReconcileInterval: it lists every task of every runtime, which
// with 1,000 tasks every 500 ms took most of the CPU the executor used
// while nothing happened (0.6 % of a core).
const retryInterval = 500 * time.Millisecond

// loop is the safety net: it retries what failed and compares the
// controller's view with each runtime's.
func (c *Manager) loop() {
	defer c.wg.Done()
	t := time.NewTicker(min(retryInterval, c.cfg.ReconcileInterval))
	defer t.Stop()
	var listed time.Time
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		relist := now.Sub(listed) >= c.cfg.ReconcileInterval
		if relist {
			listed = now
		}
		c.reconcile(relist)
	}
}

// reconcile retries what failed and, when relist is set, applies what
// each runtime lists.
func (c *Manager) reconcile(relist bool) {
	c.mu.Lock()
	type target struct {
		name  string
		rt    sdk.Runtime
		epoch uint64
	}
	var up []target
	var needRecover []string
	for name, rs := range c.rts {
		switch {
		case rs.rt == nil:
		case !rs.recovered:
			needRecover = append(needRecover, name)
		default:
			up = append(up, target{name, rs.rt, rs.epoch})
		}
	}
	now := time.Now()
	for _, e := range c.tasks {
		if e.rec.DeletionTimestamp == nil {
			continue
		}
		if !e.deleteActive && now.After(e.rec.DeletionTimestamp.Add(e.rec.DeletionGracePeriod+deleteGiveUp)) {
			c.forceDeleteLocked(e)
			continue
		}
		c.scheduleDeleteLocked(e)
	}
	c.pumpLocked()
	c.mu.Unlock()

	for _, name := range needRecover {
		c.recover(name)
	}
	if !relist {
		return
	}
	for _, tg := range up {
		asked := time.Now()
		var sts []sdk.TaskStatus
		err := c.call(c.ctx, tg.name, "List", listTimeout, func(ctx context.Context) error {
			var lerr error
			sts, lerr = tg.rt.List(ctx)
			return lerr
		})
		if err != nil {
			continue // the dispatcher notices a dead plugin
		}
		c.mu.Lock()
		if rs := c.rts[tg.name]; rs != nil && rs.epoch == tg.epoch {
			for _, s := range sts {
				// A task created since the runtime was asked is not in
				// its answer; an earlier task of the same name may be.
				if e, ok := c.tasks[s.Name]; ok && e.rec.Runtime == tg.name && e.phase == phaseStarted && !e.rec.CreatedAt.After(asked) {
					c.applyLocked(e, s.State)
				}
			}
		}
		c.mu.Unlock()
	}
}
