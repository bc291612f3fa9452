package shimdriver

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// handle is one task the driver tracks. It owns the goroutine that waits
// for the task's shim to end.
type handle struct {
	task sdk.Task
	dir  string // the shim's state directory

	// ready is closed once the task has been launched, recovered or put to
	// wait (or that failed); until then status is not meaningful.
	ready chan struct{}
	// done is closed once the task has terminated.
	done chan struct{}
	// launchMu is held while the task is being launched after a wait, so a
	// stop cannot slip in between the decision and the launch.
	launchMu sync.Mutex

	mu        sync.Mutex
	st        sdk.TaskStatus
	err       error // why launching failed, if it did
	waiting   bool  // put to wait, not launched yet
	readyOnce sync.Once

	// describeUsage, when set, tells what the task used, for its
	// terminated state's message.
	describeUsage func() string
	// group is the cgroup the task was given at its start (nil: none, or
	// started by an earlier plugin process).
	group atomic.Pointer[cgroups.Group]
}

func (h *handle) cgroup() *cgroups.Group { return h.group.Load() }

func newHandle(task sdk.Task) *handle {
	return &handle{task: task, dir: shimDir(task), ready: make(chan struct{}), done: make(chan struct{})}
}

func (h *handle) markReady() { h.readyOnce.Do(func() { close(h.ready) }) }

// settle records the outcome of a launch or recovery and, for a running
// task, starts watching its shim. The outcome itself is not published: the
// caller of Start or Recover gets it as the answer.
func (h *handle) settle(res shim.Result, pub *sdk.Publisher, log hclog.Logger) {
	var st sdk.TaskStatus
	if res.Exit != nil {
		st = h.exitStatus(*res.Exit)
	} else {
		st = statusOf(h.task.Name, res)
	}
	h.mu.Lock()
	h.st = st
	h.waiting = false
	h.mu.Unlock()
	h.markReady()
	if res.Exit != nil {
		close(h.done)
		h.release()
		return
	}
	go h.watch(res, pub, log)
}

// release lets go of what the task's cgroup holds open to read its final
// usage (see cgroups.Group.Release), once that is read or will never be.
func (h *handle) release() {
	if g := h.cgroup(); g != nil {
		g.Release()
	}
}

// wait records that the task cannot start yet, and why; it reports whether
// that changed the status.
func (h *handle) wait(nr *NotReady) bool {
	h.mu.Lock()
	changed := !h.waiting || h.st.State.Waiting == nil || h.st.State.Waiting.Reason != nr.Reason || h.st.State.Waiting.Message != nr.Message
	h.waiting = true
	h.st = sdk.TaskStatus{Name: h.task.Name, State: sdk.Waiting(nr.Reason, nr.Message)}
	h.mu.Unlock()
	h.markReady()
	return changed
}

// cancel ends a task that still waits to start, and reports whether it did.
func (h *handle) cancel() bool {
	h.launchMu.Lock()
	defer h.launchMu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.waiting {
		return false
	}
	msg := "stopped before it could start"
	if w := h.st.State.Waiting; w != nil {
		msg += " (" + w.Reason + ": " + w.Message + ")"
	}
	h.waiting = false
	h.st = sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(143, 15, sdk.ReasonFailed, msg, time.Time{}, time.Now())}
	close(h.done)
	return true
}

// fail records that the task could not be launched for a reason other than
// the task itself (the shim is missing, the disk is full...).
func (h *handle) fail(err error) {
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	h.markReady()
}

// watch waits for the task to end and publishes its exit.
func (h *handle) watch(res shim.Result, pub *sdk.Publisher, log hclog.Logger) {
	for attempt := 0; ; attempt++ {
		exit, err := res.WaitExit(context.Background(), h.dir)
		if err == nil {
			s := h.exitStatus(exit)
			h.mu.Lock()
			h.st = s
			h.mu.Unlock()
			close(h.done)
			pub.Publish(s)
			// Its final usage is in s, read before the report; what was
			// held open for it goes after.
			h.release()
			return
		}
		log.Warn("cannot wait for a task's shim; retrying", "task", h.task.Name, "error", err)
		time.Sleep(time.Duration(min(attempt+1, 10)) * 100 * time.Millisecond)
	}
}

// exitStatus is the task's terminated status, its message telling what the
// task used where that is known.
func (h *handle) exitStatus(e shim.Exit) sdk.TaskStatus {
	if h.describeUsage != nil {
		if u := h.describeUsage(); u != "" {
			if e.Message != "" {
				e.Message += "; "
			}
			e.Message += u
		}
	}
	return exitStatus(h.task.Name, e)
}

func (h *handle) snapshot() (sdk.TaskStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st, h.err
}

func (h *handle) status() sdk.TaskStatus {
	st, _ := h.snapshot()
	return st
}

func (h *handle) terminated() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}
