package logs

import (
	"context"
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// followSafetyNet bounds a follower's sleep between inotify events: on a
// file system whose writers inotify cannot see (a network file system),
// output still shows, late.
const followSafetyNet = time.Second

// followPoll is a follower's period when it has no inotify instance (the
// per-user limit, 128 by default, is reached).
const followPoll = 250 * time.Millisecond

// dirWatcher wakes a follower when something changes in a task's
// directory. inotify rather than a poll: output shows at once, and an idle
// follower costs nothing; the watch is on the directory, which also tells
// when a log file appears or is rotated. Without an inotify instance it
// polls.
type dirWatcher struct {
	// f is the inotify instance, non-blocking so that its reads obey
	// deadlines; nil when there is none. It is not changed once set: wake
	// reads it from another goroutine.
	f   *os.File
	buf []byte
	// polling is set when f failed; only wait uses it.
	polling bool
}

func newDirWatcher(dir string) *dirWatcher {
	w := &dirWatcher{}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return w
	}
	const mask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return w
	}
	w.f = os.NewFile(uintptr(fd), "inotify:"+dir)
	w.buf = make([]byte, 4096)
	return w
}

func (w *dirWatcher) inotify() bool { return w.f != nil && !w.polling }

// wait returns after a change, at the latest after followSafetyNet (or
// followPoll when polling), and at once when ctx ends.
func (w *dirWatcher) wait(ctx context.Context) {
	if !w.inotify() {
		t := time.NewTimer(followPoll)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	_ = w.f.SetReadDeadline(time.Now().Add(followSafetyNet))
	// wake runs after ctx has ended: checked after the deadline is set,
	// a wake cannot be lost between the two.
	if ctx.Err() != nil {
		return
	}
	if _, err := w.f.Read(w.buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// An instance that fails once would fail at every call: poll
		// instead of spinning.
		w.polling = true
	}
}

// wake ends a wait now; it may run at the same time as wait.
func (w *dirWatcher) wake() {
	if f := w.f; f != nil {
		_ = f.SetReadDeadline(time.Unix(1, 0))
	}
}

func (w *dirWatcher) close() {
	if w.f != nil {
		w.f.Close()
	}
}
