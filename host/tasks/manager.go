// Package tasks holds the host's table of tasks and moves every task
// through its life: it hands new tasks to their runtime (in creation order,
// within --max-concurrent-tasks), applies the status changes runtimes push,
// carries out deletions, re-adopts tasks after a restart of the host or of a
// plugin, and periodically compares its view with each runtime's as a
// safety net for a lost event. Every change of a task goes through one
// function (transition, lifecycle.go), and from there to the disk, the
// metrics, the waiting clients and the change feed that watches read
// (feed.go).
package tasks

import (
	"context"
	"os"
	"sort"
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
	// History is how many changes the change feed keeps for watches to
	// resume from; 0 means DefaultHistory.
	History int
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
	// ResourceVersion is the resource version of the task's last change
	// (see Watch).
	ResourceVersion uint64
}

// NewTask is a task a client asks for.
type NewTask struct {
	Name string
	Spec sdk.TaskSpec
	// Format is the format it came in (store.FormatNested or FormatCompat).
	Format string
}

// runtimeState is the manager's view of one runtime.
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

// Manager owns the task table. Its lock, mu, guards the table and is only
// ever held for work in memory: never across a call to a runtime or a
// write to the disk. Requests on one task are ordered by the task's own
// stages (a deletion being recorded, a creation being made durable), not
// by a lock.
type Manager struct {
	cfg      Config
	log      hclog.Logger
	store    *store.Store
	runtimes Runtimes
	feed     *feed
	persist  *persister

	mu    sync.Mutex
	tasks map[string]*entry
	// reserved holds the names being created, each with a channel closed
	// when its creation has ended one way or the other.
	reserved map[string]chan struct{}
	pending  []*entry // the start queue (queued stages), in creation order
	active   int      // tasks in a stage that holds a slot
	seq      uint64
	rts      map[string]*runtimeState
	// recoveries is closed, and replaced, whenever a runtime has recovered
	// its tasks (see AwaitRecovered).
	recoveries chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// answered is when each kind of call to each runtime was last
	// answered (see call).
	answeredMu sync.Mutex
	answered   map[string]time.Time
}

// New loads the store and returns a manager. Call Run to start its
// background work.
func New(cfg Config, st *store.Store, rts Runtimes, log hclog.Logger) (*Manager, error) {
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	lease, err := st.VersionLease()
	if err != nil {
		return nil, err
	}
	// Versions begin after the last lease, so never one handed out before
	// the restart; and no lower than the clock in microseconds, so that
	// they do not go back either when the lease could not be written (a
	// full or read-only data directory, on which the host still serves).
	first := max(lease+1, uint64(time.Now().UnixMicro()))
	limit := first + leaseStep
	if err := st.LeaseVersions(limit); err != nil {
		log.Error("cannot record the resource versions' lease; versions follow the clock until it can be", "error", err)
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
		feed:  newFeed(cfg.History, first, limit, st.LeaseVersions, log),
		tasks: map[string]*entry{}, reserved: map[string]chan struct{}{}, rts: map[string]*runtimeState{},
		ctx: ctx, cancel: cancel, recoveries: make(chan struct{}),
	}
	c.persist = newPersister(c)
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].CreatedAt.Equal(recs[j].CreatedAt) {
			return recs[i].CreatedAt.Before(recs[j].CreatedAt)
		}
		return recs[i].Name < recs[j].Name
	})
	c.mu.Lock()
	for _, r := range recs {
		c.seq++
		e := &entry{rec: r, seq: c.seq, ended: make(chan struct{})}
		c.tasks[r.Name] = e
		c.transition(e, event{kind: evLoaded})
	}
	c.mu.Unlock()
	c.feed.startHistory()
	log.Info("loaded the task store", "tasks", len(recs), "dir", st.Root(), "resourceVersion", c.feed.current())
	return c, nil
}

// Run starts the manager's background work; it stops when Close is
// called.
func (c *Manager) Run() {
	c.persist.run(8)
	c.wg.Add(1)
	go c.loop()
	c.mu.Lock()
	for _, e := range c.tasks {
		c.scheduleDeleteLocked(e)
	}
	c.mu.Unlock()
}

// Close stops the background work after the queued writes are done. Tasks
// keep running in their runtimes.
func (c *Manager) Close() {
	c.cancel()
	c.wg.Wait()
	c.persist.drain()
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
	ts, _ := c.Snapshot()
	return ts
}

// Snapshot returns every task, sorted by name, and the resource version
// it is at: every change up to it is in the list.
func (c *Manager) Snapshot() ([]Task, uint64) {
	c.mu.Lock()
	out := make([]Task, 0, len(c.tasks))
	for _, e := range c.tasks {
		out = append(out, e.view())
	}
	rv := c.feed.current()
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, rv
}
