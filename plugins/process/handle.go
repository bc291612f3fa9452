package main

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// handle is one task the driver tracks. It owns the goroutine that waits
// for the task's shim to end.
type handle struct {
	name string
	dir  string // the shim's state directory

	// ready is closed once the task has been launched or recovered (or that
	// failed); until then status is not meaningful.
	ready chan struct{}
	// done is closed once the task has terminated.
	done chan struct{}

	mu     sync.Mutex
	status sdk.TaskStatus
	err    error // why launching failed, if it did
}

func newHandle(name, dir string) *handle {
	return &handle{name: name, dir: dir, ready: make(chan struct{}), done: make(chan struct{})}
}

// settle records the outcome of a launch or recovery and, for a running
// task, starts watching its shim. The outcome itself is not published: the
// caller of Start or Recover gets it as the answer.
func (h *handle) settle(res shim.Result, pub *sdk.Publisher, log hclog.Logger) {
	h.mu.Lock()
	h.status = statusOf(h.name, res)
	h.mu.Unlock()
	close(h.ready)
	if res.Exit != nil {
		close(h.done)
		return
	}
	go h.watch(res, pub, log)
}

// fail records that the task could not be launched for a reason other than
// the task itself (the shim is missing, the disk is full...).
func (h *handle) fail(err error) {
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	close(h.ready)
}

// watch waits for the task to end and publishes its exit.
func (h *handle) watch(res shim.Result, pub *sdk.Publisher, log hclog.Logger) {
	for attempt := 0; ; attempt++ {
		exit, err := res.WaitExit(context.Background(), h.dir)
		if err == nil {
			h.mu.Lock()
			h.status = exitStatus(h.name, exit)
			s := h.status
			h.mu.Unlock()
			close(h.done)
			pub.Publish(s)
			return
		}
		log.Warn("cannot wait for a task's shim; retrying", "task", h.name, "error", err)
		time.Sleep(time.Duration(min(attempt+1, 10)) * 100 * time.Millisecond)
	}
}

func (h *handle) snapshot() (sdk.TaskStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status, h.err
}

func (h *handle) terminated() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}
