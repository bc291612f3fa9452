package cri

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// containerd's CRI logger holds the container's log file open for writing
// from the container's start until both of its output streams have ended
// and their last lines are written (a last line without a newline only at
// the end of its stream). Its close is the one sign that the log is
// complete, and it comes neither with containerd's exit event (before it)
// nor with the CRI status (which can come before it: the logger's write can
// lag behind the task's deletion on a busy disk). So an exit is reported
// only once no one holds the log open for writing.

// errLogUnknown is returned when whether the log is still written cannot
// be told here (no file leases on its file system, or no right to take
// one).
var errLogUnknown = errors.New("cannot tell whether the container's log is still being written")

// logWritten reports whether any process holds the file at path open for
// writing. The kernel grants a read lease only on a file no one has open
// for writing; the lease is given back at once.
func logWritten(path string) (bool, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ENOENT) {
		// Never opened by the runtime: the container wrote nothing.
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("while opening the container's log: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_RDLCK); err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return true, nil
		}
		return false, fmt.Errorf("%w: %w", errLogUnknown, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
		return false, fmt.Errorf("while giving back a lease on the container's log: %w", err)
	}
	return false, nil
}

// The log is looked at logPollFirst after an exit, then at doubling
// intervals up to logPollMax, for logCloseFor in all: a container's output
// still in a pipe takes a few milliseconds to drain, and a log held open
// longer (by a process of the task that outlived it and keeps its output)
// must not keep the exit unreported.
const (
	logPollFirst = 100 * time.Microsecond
	logPollMax   = 5 * time.Millisecond
	logCloseFor  = 2 * time.Second
)

// awaitLogClosed waits until the container's log is no longer written, and
// reports whether it saw it so: false when it still was after logCloseFor
// (once for the handle: later calls do not wait again), when ctx ended, or
// when it cannot be told (with the error).
func (h *handle) awaitLogClosed(ctx context.Context) (bool, error) {
	if h.logHeld.Load() {
		return false, nil
	}
	path := filepath.Join(h.task.Dir, logFile)
	deadline := time.Now().Add(logCloseFor)
	pause := logPollFirst
	for {
		written, err := logWritten(path)
		if err != nil {
			return false, err
		}
		if !written {
			return true, nil
		}
		if time.Now().After(deadline) {
			h.logHeld.Store(true)
			return false, nil
		}
		if !sleep(ctx, pause) {
			return false, ctx.Err()
		}
		pause = min(2*pause, logPollMax)
	}
}

// logUnknown says, once for the plugin, that the logs' completion cannot be
// told: exits then wait for the CRI status, which can come before the last
// lines are written.
func (d *Driver) logUnknown(err error) {
	if d.logUnknownTold.CompareAndSwap(false, true) {
		d.log.Warn("cannot tell when a container's log is complete: exits are reported from the CRI status, tens of milliseconds later, at times before the log's last lines", "error", err)
	}
}
