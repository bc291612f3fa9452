package main

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// handle is one task the driver tracks. It owns the goroutine that waits
// for the task's supervisor to end.
type handle struct {
	task sdk.Task

	// ready is closed once the task has been launched or adopted (or that
	// failed); until then its status is not meaningful.
	ready chan struct{}
	// done is closed once the task has terminated.
	done chan struct{}

	mu        sync.Mutex
	st        sdk.TaskStatus
	err       error // why launching failed, if it did
	readyOnce sync.Once
	doneOnce  sync.Once
}

func newHandle(task sdk.Task) *handle {
	return &handle{task: task, ready: make(chan struct{}), done: make(chan struct{})}
}

// settle records what the supervisor's record says of the task. The status
// is not published: the caller of Start or Recover gets it as the answer.
func (h *handle) settle(rec record) {
	h.mu.Lock()
	h.st = statusOf(h.task.Name, rec)
	h.mu.Unlock()
	if rec.Result != nil {
		h.doneOnce.Do(func() { close(h.done) })
	}
	h.readyOnce.Do(func() { close(h.ready) })
}

// fail records that the task could not be launched for a reason other than
// the task itself (the executable vanished, the disk is full, ...).
func (h *handle) fail(err error) {
	h.mu.Lock()
	h.err = err
	h.mu.Unlock()
	h.readyOnce.Do(func() { close(h.ready) })
}

// watch waits for the task's supervisor to end, which it learns by taking
// the supervisor's lock, and publishes how the task ended.
func (h *handle) watch(pub *sdk.Publisher, log hclog.Logger) {
	rec := waitSupervisor(h.task, log)
	h.mu.Lock()
	h.st = statusOf(h.task.Name, rec)
	st := h.st
	h.mu.Unlock()
	h.doneOnce.Do(func() { close(h.done) })
	pub.Publish(st)
}

// waitSupervisor blocks until no supervisor runs for task and returns its
// final record. A supervisor that ended without recording the task's end
// (it was killed, and its attempt with it) has that recorded now, so every
// later look at the task tells the same story.
func waitSupervisor(task sdk.Task, log hclog.Logger) record {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		lock, err := openLock(task.Dir)
		if err == nil {
			err = flockWait(lock)
			if err == nil {
				rec := finalRecord(task, log)
				unlock(lock)
				return rec
			}
			lock.Close()
		}
		if errors.Is(err, os.ErrNotExist) {
			// The task's directory is gone: the host removed the task.
			return lost(record{}, "the task's directory was removed while it ran")
		}
		log.Warn("cannot wait for a task's supervisor; retrying", "task", task.Name, "error", err, "in", backoff)
		time.Sleep(backoff)
	}
}

// flockWait takes f's lock, waiting for its holder to let go.
func flockWait(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// finalRecord reads the record of a task whose supervisor has ended; the
// caller holds the task's lock.
func finalRecord(task sdk.Task, log hclog.Logger) record {
	rec, found, err := readRecord(task.Dir)
	switch {
	case err != nil:
		log.Error("cannot read a task's record; reporting its end as unknown", "task", task.Name, "error", err)
		rec = lost(rec, "cannot read the task's record: "+err.Error())
	case !found:
		rec = lost(rec, "the task's supervisor ended without recording anything")
	case rec.Result == nil:
		rec = lost(rec, "the task's supervisor ended without recording how the task ended (was it killed?); its attempt was killed with it")
		// The attempt's leader died with the supervisor (Pdeathsig), but
		// not what it started in its process group. The group's ID cannot
		// name another group while any of them lives, so this reaches
		// them; once they are gone, it is a no-op (or, should the number
		// have been reused by then for a new group, an unlucky one: the
		// price of finding a dead supervisor late).
		if n := len(rec.Attempts); n > 0 && rec.Attempts[n-1].FinishedAt.IsZero() && rec.Attempts[n-1].PID > 0 {
			_ = syscall.Kill(-rec.Attempts[n-1].PID, syscall.SIGKILL)
		}
	default:
		return rec
	}
	if err := writeJSON(filepath.Join(task.Dir, statusFile), rec); err != nil {
		log.Warn("cannot record a task's unknown end", "task", task.Name, "error", err)
	}
	return rec
}

// lost gives rec the result Kubernetes gives a container whose end nobody
// saw: exit code 137, reason ContainerStatusUnknown.
func lost(rec record, why string) record {
	rec.Result = &result{ExitCode: 137, Reason: sdk.ReasonStatusUnknown, Message: why, FinishedAt: time.Now()}
	return rec
}

func (h *handle) snapshot() (sdk.TaskStatus, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st, h.err
}

func (h *handle) terminated() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// statusOf describes a supervisor's record as a task status.
func statusOf(name string, rec record) sdk.TaskStatus {
	if r := rec.Result; r != nil {
		return sdk.TaskStatus{Name: name, State: sdk.Terminated(r.ExitCode, r.Signal, r.Reason, r.Message, rec.StartedAt, r.FinishedAt)}
	}
	return sdk.TaskStatus{Name: name, State: sdk.Running(rec.StartedAt)}
}
