package cri

import (
	"errors"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// logCloseWait bounds how long an exit containerd has reported waits for
// the container's log to be complete before it is reported anyway.
const logCloseWait = time.Second

// logWatch tells when containerd has closed a task's container.log. Its CRI
// logger closes the file once it has written the container's last output
// (containerd's createContainerLoggers), which is after the exit its TaskExit
// event reports: an exit is reported once its output is complete, without
// waiting for the container's CRI status (tens of milliseconds later, after
// the task's deletion in containerd).
type logWatch struct {
	f   *os.File
	fd  int
	log hclog.Logger

	mu    sync.Mutex
	byWD  map[int32]*logDir
	byDir map[string]*logDir
}

// logDir is a watched task directory.
type logDir struct {
	wd  int32
	dir string
	// closed is when container.log was last closed after writing; wake is
	// closed and replaced then.
	closed time.Time
	wake   chan struct{}
}

func newLogWatch(log hclog.Logger) (*logWatch, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	w := &logWatch{f: os.NewFile(uintptr(fd), "inotify"), fd: fd, log: log, byWD: map[int32]*logDir{}, byDir: map[string]*logDir{}}
	go w.read()
	return w, nil
}

// track starts watching a task's directory (again: idempotent).
func (w *logWatch) track(dir string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.byDir[dir] != nil {
		return
	}
	wd, err := unix.InotifyAddWatch(w.fd, dir, unix.IN_CLOSE_WRITE|unix.IN_ONLYDIR)
	if err != nil {
		w.log.Debug("cannot watch a task's log; its exits wait for the runtime's status", "dir", dir, "error", err)
		return
	}
	ld := &logDir{wd: int32(wd), dir: dir, wake: make(chan struct{})}
	w.byWD[ld.wd], w.byDir[dir] = ld, ld
}

// untrack stops watching a task's directory.
func (w *logWatch) untrack(dir string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if ld := w.byDir[dir]; ld != nil {
		_, _ = unix.InotifyRmWatch(w.fd, uint32(ld.wd))
		delete(w.byDir, dir)
		delete(w.byWD, ld.wd)
	}
}

// closedAfter waits until container.log in dir has been closed after t,
// at most wait; false: it was not (or dir is not watched).
func (w *logWatch) closedAfter(dir string, t time.Time, wait time.Duration) bool {
	if w == nil {
		return false
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		w.mu.Lock()
		ld := w.byDir[dir]
		if ld == nil {
			w.mu.Unlock()
			return false
		}
		if !ld.closed.Before(t) {
			w.mu.Unlock()
			return true
		}
		ch := ld.wake
		w.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

func (w *logWatch) read() {
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			if !errors.Is(err, os.ErrClosed) {
				w.log.Warn("the watch of the tasks' logs ended; exits wait for the runtime's status", "error", err)
			}
			return
		}
		now := time.Now()
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			off += unix.SizeofInotifyEvent + int(ev.Len)
			name := string(nameBytes)
			for len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			w.mu.Lock()
			ld := w.byWD[ev.Wd]
			switch {
			case ld == nil:
			case ev.Mask&unix.IN_IGNORED != 0:
				// The directory is gone.
				delete(w.byWD, ev.Wd)
				if w.byDir[ld.dir] == ld {
					delete(w.byDir, ld.dir)
				}
			case ev.Mask&unix.IN_CLOSE_WRITE != 0 && name == logFile:
				ld.closed = now
				close(ld.wake)
				ld.wake = make(chan struct{})
			}
			w.mu.Unlock()
		}
	}
}

// close ends the watch.
func (w *logWatch) close() {
	if w != nil {
		w.f.Close()
	}
}
