package shim

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Result is what a shim reports about its task: State once it runs, or
// Exit if it has ended (or could not start). Exactly one is set.
type Result struct {
	State *State
	Exit  *Exit
}

// Launch starts a shim for spec with state directory dir (created if
// needed; a previous attempt's files in it are replaced) and returns once
// the task has started or failed to. shimPath is the task-executor-shim
// executable.
//
// The caller must make sure only one Launch runs per directory and that no
// shim of an earlier Launch in it is still alive (see Inspect).
func Launch(ctx context.Context, shimPath, dir string, spec Spec) (Result, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("while creating the shim directory: %w", err)
	}
	// Take the lock before anything else and hand it over to the shim: a
	// live shim's files are then never touched, and there is no moment in
	// which a live shim does not hold it.
	lock, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("while opening the shim lock: %w", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return Result{}, fmt.Errorf("while taking the shim lock (is a shim still running?): %w", err)
	}
	for _, name := range []string{stateFile, exitFile, ctlFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Result{}, fmt.Errorf("while clearing a previous attempt: %w", err)
		}
	}
	if err := writeJSON(dir, specFile, spec); err != nil {
		return Result{}, err
	}
	if err := syscall.Mkfifo(filepath.Join(dir, ctlFile), 0o600); err != nil {
		return Result{}, fmt.Errorf("while creating the control FIFO: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, logFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return Result{}, fmt.Errorf("while opening the shim log: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return Result{}, err
	}
	defer devnull.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return Result{}, fmt.Errorf("while creating the report pipe: %w", err)
	}
	defer pr.Close()

	pid, err := syscall.ForkExec(shimPath, []string{shimPath, dir}, &syscall.ProcAttr{
		Dir:   dir,
		Env:   []string{"GOMAXPROCS=1"},
		Files: []uintptr{devnull.Fd(), pw.Fd(), logf.Fd(), lock.Fd()},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	pw.Close()
	if err != nil {
		return Result{}, fmt.Errorf("while starting the shim %s: %w", shimPath, err)
	}
	// The shim is our child until we die: reap it whenever it ends, so it
	// does not linger as a zombie. Wait does the same for orphans it finds.
	go reapWhenDone(pid)

	type line struct {
		r   report
		err error
	}
	ch := make(chan line, 1)
	go func() {
		var l line
		b, err := bufio.NewReader(pr).ReadBytes('\n')
		if err != nil {
			l.err = fmt.Errorf("the shim ended without reporting (see %s): %w", filepath.Join(dir, logFile), err)
		} else if err := json.Unmarshal(b, &l.r); err != nil {
			l.err = fmt.Errorf("while decoding the shim's report: %w", err)
		}
		ch <- l
	}()
	select {
	case l := <-ch:
		if l.err != nil {
			return Result{}, l.err
		}
		return Result{State: l.r.State, Exit: l.r.Exit}, nil
	case <-ctx.Done():
		// The shim carries on; a later Inspect finds it.
		return Result{}, fmt.Errorf("while waiting for the shim to start the task: %w", ctx.Err())
	}
}

// reapWhenDone collects a child shim's exit status once it has exited,
// without holding a thread blocked in wait4 meanwhile.
func reapWhenDone(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	_ = awaitPidfd(context.Background(), fd)
	var info unix.Siginfo
	_ = unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil)
	unix.Close(fd)
}

// awaitPidfd blocks until the process behind the pidfd fd exits or ctx
// ends, through the Go runtime's poller (no thread is parked per process).
// It takes ownership of nothing: the caller closes fd.
func awaitPidfd(ctx context.Context, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("while duplicating a pidfd: %w", err)
	}
	f := os.NewFile(uintptr(dup), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		return n > 0
	})
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Inspect reads a state directory left by a shim, for a plugin that has
// restarted. It returns os.ErrNotExist (wrapped) when no shim was ever
// launched there, or when one was launched but died before starting the
// task (its directory is then cleared so Launch can try again). alive
// reports whether the shim still runs.
func Inspect(ctx context.Context, dir string) (res Result, alive bool, err error) {
	if _, err := os.Stat(filepath.Join(dir, specFile)); err != nil {
		return Result{}, false, err
	}
	for {
		var exit Exit
		if err := readJSON(dir, exitFile, &exit); err == nil {
			return Result{Exit: &exit}, shimAlive(dir), nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return Result{}, false, err
		}
		alive = shimAlive(dir)
		var st State
		if err := readJSON(dir, stateFile, &st); err == nil {
			if alive {
				return Result{State: &st}, true, nil
			}
			// Dead without an exit file: look once more, the shim may have
			// written it and exited between our two reads.
			if err := readJSON(dir, exitFile, &exit); err == nil {
				return Result{Exit: &exit}, false, nil
			}
			lost := lostExit(st)
			return Result{Exit: &lost}, false, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return Result{}, false, err
		}
		if !alive {
			return Result{}, false, fmt.Errorf("the shim in %s died before starting its task: %w", dir, os.ErrNotExist)
		}
		// Alive but has not started the task yet: it is about to.
		select {
		case <-ctx.Done():
			return Result{}, true, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// lostExit describes a task whose shim died without recording an exit, and
// kills what is left of the task (if its PID still names it): nobody could
// report on it any more.
func lostExit(st State) Exit {
	if sameProcess(st.PID, st.PIDStart) {
		_ = syscall.Kill(-st.PID, syscall.SIGKILL)
	}
	return Exit{
		ExitCode: 137, Reason: ReasonStatusUnknown,
		Message:   "the task's shim ended without recording how the task exited; the task was killed",
		StartedAt: st.StartedAt, FinishedAt: time.Now(),
	}
}

// shimAlive reports whether a shim holds the directory's lock.
func shimAlive(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// Wait blocks until the shim described by st has ended and returns how the
// task exited. It works for a shim this process launched and for one it
// found again after a restart.
func Wait(ctx context.Context, dir string, st State) (Exit, error) {
	var exit Exit
	if fd, err := unix.PidfdOpen(st.ShimPID, unix.PIDFD_NONBLOCK); err == nil {
		// The pidfd is taken first and the identity checked after: if the
		// start time still matches, the pidfd names our shim, not a
		// process that reused its PID.
		if sameProcess(st.ShimPID, st.ShimStart) {
			err = awaitPidfd(ctx, fd)
		}
		unix.Close(fd)
		if err != nil {
			return Exit{}, err
		}
	}
	if err := readJSON(dir, exitFile, &exit); err == nil {
		return exit, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return Exit{}, err
	}
	return lostExit(st), nil
}

// Stop asks the shim in dir to stop its task: SIGTERM to the task's process
// group, SIGKILL after grace (at once if grace is zero). It returns ErrGone
// if no shim is running there; the caller then learns the task's end from
// Wait or Inspect.
func Stop(dir string, grace time.Duration) error {
	f, err := os.OpenFile(filepath.Join(dir, ctlFile), os.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENXIO) || errors.Is(err, os.ErrNotExist) {
			return ErrGone
		}
		return fmt.Errorf("while opening the shim's control FIFO: %w", err)
	}
	defer f.Close()
	if grace < 0 {
		grace = 0
	}
	if _, err := f.WriteString("stop " + strconv.FormatInt(int64(grace), 10) + "\n"); err != nil {
		if errors.Is(err, unix.EPIPE) {
			return ErrGone
		}
		return fmt.Errorf("while writing to the shim's control FIFO: %w", err)
	}
	return nil
}
