package tasks

import (
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/sdk"
)

// A task's life is two state machines side by side, as a pod's is: where it
// is in its hand-over to the runtime (its stage), and where its deletion is
// (its deletion stage), which may begin in any stage. Both change in one
// place only, transition, and everything that must follow a change
// (the running count, the start queue, the write of the final state, the
// metrics, the clients waiting for the end, the change feed, the deletion's
// work) follows from there, computed from what changed.

// stage is where a task is in its hand-over to the runtime.
type stage int

const (
	// stageUnknown: loaded from disk; the runtime must say (Recover)
	// whether it has the task before anything else happens to it.
	stageUnknown stage = iota
	// stagePending: never handed to the runtime; waits in the start queue.
	stagePending
	// stageRetry: a Start was sent and its outcome lost (the plugin died,
	// the call failed); waits in the start queue to be sent again. Unlike
	// a pending task, its deletion must go through the runtime.
	stageRetry
	// stageStarting: a Start call is in flight.
	stageStarting
	// stageStarted: the runtime has the task.
	stageStarted
	// stageTerminated: the task has ended; nothing will change its state.
	stageTerminated
)

var stageNames = [...]string{"unknown", "pending", "retry", "starting", "started", "terminated"}

func (s stage) String() string { return stageNames[s] }

// holdsSlot: a task in the stage counts against --max-concurrent-tasks.
func (s stage) holdsSlot() bool { return s == stageStarting || s == stageStarted }

// queued: a task in the stage waits in the start queue.
func (s stage) queued() bool { return s == stagePending || s == stageRetry }

// delStage is where a task's deletion is.
type delStage int

const (
	// delNone: nobody asked for the task's deletion.
	delNone delStage = iota
	// delMarking: a request is recording the deletion on disk; others wait
	// for it (it may fail, and a deletion is acknowledged only once
	// durable).
	delMarking
	// delMarked: the deletion is accepted and durable; it is carried out
	// once the runtime can be asked.
	delMarked
	// delDeleting: a goroutine is carrying the deletion out.
	delDeleting
	// delGone: the task's files are removed and it has left the table.
	delGone
)

// entry is one task in the table. Its fields change only in transition,
// under Manager.mu.
type entry struct {
	rec store.Record
	// seq is the creation order, the order of the start queue.
	seq uint64
	// rv is the resource version of the task's last visible change.
	rv    uint64
	stage stage
	del   delStage
	// retryAt delays the next Start after a lost one.
	retryAt time.Time
	// durable, for a task made by Create, is closed once its record is
	// durable or its creation was taken back. A deletion waits for it:
	// removing the directory under the commit failed a creation that had
	// taken place (a 500 to its client, found by the chaos test).
	durable chan struct{}
	// marked is closed when a deletion being recorded (delMarking) has
	// been recorded or has failed.
	marked chan struct{}
	// ended is closed once the task has terminated or is gone, for the
	// clients waiting for that.
	ended chan struct{}
	// startCounted: the task's start is in the metrics, or never will be
	// (see observeStart).
	startCounted bool
	// message, when set, says that the last setTasks listed the task with
	// another spec than it has (it keeps its own).
	message string
	// ioMu orders the write of the final state against the removal of the
	// task's directory (see persistOne and finishDelete).
	ioMu sync.Mutex
}

func (e *entry) view() Task {
	r := e.rec
	return Task{
		Name: r.Name, Spec: r.Spec, Runtime: r.Runtime, CreatedAt: r.CreatedAt,
		DeletionTimestamp: r.DeletionTimestamp, DeletionGracePeriod: r.DeletionGracePeriod, State: r.State,
		Message: e.message, Format: r.Format, ResourceVersion: e.rv,
	}
}

// evKind names what happened to a task.
type evKind int

const (
	// evLoaded: the task's record was read from disk at the host's start.
	evLoaded evKind = iota
	// evCreated: a request created the task (its record is written, and
	// made durable in parallel).
	evCreated
	// evCommitted: the record of a task made by Create is durable.
	evCommitted
	// evCommitFailed: it could not be made durable; the task is taken
	// back (deleted at once).
	evCommitFailed
	// evQueued: no task slot is free (msg says so).
	evQueued
	// evStartSent: a Start call went to the runtime.
	evStartSent
	// evStarted: the runtime answered a Start with the task's state.
	evStarted
	// evStartRefused: the runtime will never run the task (state is its
	// StartError).
	evStartRefused
	// evStartLost: the Start's outcome is unknown; it is sent again later.
	evStartLost
	// evReported: the runtime reported the task's state (an event, a
	// list).
	evReported
	// evRecovered: the runtime's Recover found the task, in state.
	evRecovered
	// evNotRecovered: the runtime's Recover did not find the task: it was
	// never started, or its start was lost.
	evNotRecovered
	// evMarking: a request began recording the task's deletion.
	evMarking
	// evMarked: the deletion is durable (deletion says when and with which
	// grace period).
	evMarked
	// evMarkFailed: recording the deletion failed; the task stays.
	evMarkFailed
	// evDeleting: the deletion is being carried out.
	evDeleting
	// evDeleteFailed: a step of the deletion failed; it is retried.
	evDeleteFailed
	// evForceEnded: the runtime did not carry a deletion out in time and
	// the host ended the task itself (state says how).
	evForceEnded
	// evRemoved: the task's files are gone; it leaves the table.
	evRemoved
	// evSpecMismatch: setTasks listed the task with another spec (msg).
	evSpecMismatch
	// evSpecAgreed: setTasks listed the task with its own spec again.
	evSpecAgreed
)

// event is what happened, with what it carries.
type event struct {
	kind     evKind
	state    corev1.ContainerState
	deletion store.Deletion
	msg      string
	// uncommitted, for evCreated, says the record is not durable yet
	// (evCommitted or evCommitFailed follows).
	uncommitted bool
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

// takeState applies a state the runtime reported to e.rec.State and says
// whether it changed anything: a state never goes back (running to
// waiting), and a terminated one is final.
func takeState(e *entry, s corev1.ContainerState) bool {
	cur := e.rec.State
	if cur.Terminated != nil || rank(s) < rank(cur) || (rank(s) == 1 && rank(cur) == 1) {
		return false
	}
	e.rec.State = s
	return true
}

// transition is the only way a task changes. It applies ev to e (under
// c.mu) and then carries out what follows from the change.
func (c *Manager) transition(e *entry, ev event) {
	was, wasDel, wasState := e.stage, e.del, e.rec.State
	visible := false // a change the API shows
	switch ev.kind {
	case evLoaded:
		if e.rec.State.Terminated != nil {
			e.stage = stageTerminated
		}
		if e.rec.DeletionTimestamp != nil {
			e.del = delMarked
		}
		e.startCounted = true // its start belongs to an earlier host
	case evCreated:
		e.stage = stagePending
		if ev.uncommitted {
			e.durable = make(chan struct{})
		}
		visible = true
	case evCommitted:
		close(e.durable)
	case evCommitFailed:
		close(e.durable)
		now := time.Now()
		e.rec.DeletionTimestamp, e.rec.DeletionGracePeriod = &now, 0
		e.del = delMarked
		visible = true
	case evQueued:
		if w := e.rec.State.Waiting; w != nil && (w.Reason != sdk.ReasonQueued || w.Message != ev.msg) {
			e.rec.State = sdk.Waiting(sdk.ReasonQueued, ev.msg)
			visible = true
		}
	case evStartSent:
		e.stage = stageStarting
	case evStarted:
		e.stage = stageStarted
		visible = takeState(e, ev.state)
	case evStartRefused:
		// A spec the runtime can never run ends the task, as a container
		// that cannot be created does in Kubernetes.
		e.stage = stageStarted
		visible = takeState(e, ev.state)
	case evStartLost:
		e.stage = stageRetry
		e.retryAt = time.Now().Add(time.Second)
	case evReported:
		if e.stage == stageUnknown {
			// The runtime knows the task, so it was started; Recover will
			// say the same.
			e.stage = stageStarted
		}
		visible = takeState(e, ev.state)
	case evRecovered:
		if e.stage != stageTerminated {
			e.stage = stageStarted
		}
		visible = takeState(e, ev.state)
	case evNotRecovered:
		if e.stage == stageUnknown {
			e.stage = stagePending
		} else {
			e.stage = stageRetry
		}
	case evMarking:
		e.del = delMarking
		e.marked = make(chan struct{})
	case evMarked:
		close(e.marked)
		at := ev.deletion.At
		e.rec.DeletionTimestamp, e.rec.DeletionGracePeriod = &at, ev.deletion.GracePeriod
		e.del = delMarked
		visible = true
	case evMarkFailed:
		close(e.marked)
		e.del = delNone
	case evDeleting:
		e.del = delDeleting
	case evDeleteFailed:
		e.del = delMarked
	case evForceEnded:
		visible = takeState(e, ev.state)
	case evRemoved:
		e.del = delGone
		visible = true
	case evSpecMismatch:
		visible = e.message == ""
		if visible {
			e.message = ev.msg // said at the first such call: repeating it changes nothing
		}
	case evSpecAgreed:
		visible = e.message != ""
		e.message = ""
	}
	if e.rec.State.Terminated != nil && e.del != delGone {
		e.stage = stageTerminated
	}
	c.effects(e, ev, was, wasDel, wasState, visible)
}

// effects carries out what follows from a change of e.
func (c *Manager) effects(e *entry, ev event, was stage, wasDel delStage, wasState corev1.ContainerState, visible bool) {
	if e.rec.State.Terminated != nil && wasState.Terminated == nil || ev.kind == evLoaded && e.stage == stageTerminated {
		// The state a crash must not lose. Only the final state is
		// saved: a running one would be a hint at best (after a restart
		// the runtime is asked anyway), and writing it costs every start
		// two metadata operations on the disk. The write is queued before
		// the waiting clients are woken: Go runs the goroutine woken last
		// first, and the clients' answers are the ones someone waits for.
		if ev.kind != evLoaded {
			c.persist.queue(e)
		}
		close(e.ended)
	}
	if ev.kind != evLoaded && !sameState(e.rec.State, wasState) && c.cfg.Metrics != nil {
		if latency, ok := e.startLatency(e.rec.State); ok {
			e.startCounted = true
			c.cfg.Metrics.TaskStarted(latency)
		}
		if t := e.rec.State.Terminated; t != nil {
			e.startCounted = true
			c.cfg.Metrics.TaskTerminated(t.Reason, time.Since(t.FinishedAt.Time), !t.FinishedAt.IsZero())
		}
	}
	if e.del == delGone && wasDel != delGone {
		delete(c.tasks, e.rec.Name)
		if e.rec.State.Terminated == nil {
			close(e.ended)
		}
	}
	slots := 0
	if was.holdsSlot() {
		slots--
	}
	if e.stage.holdsSlot() && e.del != delGone {
		slots++
	}
	c.active += slots
	if e.stage.queued() && !was.queued() && e.del != delGone {
		c.enqueueLocked(e)
	}
	if visible || ev.kind == evLoaded {
		e.rv = c.feed.assign()
	}
	switch {
	case ev.kind == evCreated:
		c.feed.publishLocked(Event{Type: Added, Task: e.view()})
	case e.del == delGone:
		c.feed.publishLocked(Event{Type: Deleted, Task: e.view()})
	case visible:
		c.feed.publishLocked(Event{Type: Modified, Task: e.view()})
	}
	// A deletion is carried out once it is accepted, and tried again
	// whenever the task's stage changes (a start answered, a recovery), as
	// those may be what it waited for; after a failed step, the loop
	// retries it.
	if e.del == delMarked && (wasDel < delMarked || was != e.stage) {
		c.scheduleDeleteLocked(e)
	}
	if slots < 0 || e.del == delGone || e.stage.queued() && !was.queued() {
		c.pumpLocked()
	}
}

// sameState reports whether two states are the same one, as transition
// replaces a state whole whenever it changes.
func sameState(a, b corev1.ContainerState) bool {
	return a.Waiting == b.Waiting && a.Running == b.Running && a.Terminated == b.Terminated
}
