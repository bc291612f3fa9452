package tasks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Deadlines of the calls to a runtime. A plugin that does not answer a call
// within its deadline, while no other call of the same kind to it has
// been answered since that one began, is stuck (a deadlock, a hung system
// call, a stopped process), not merely busy (hundreds of starts at once on
// a loaded node): the controller reports it (Config.Stuck), and the
// dispatcher restarts it, after which its tasks are recovered from what
// the runtime left on disk.
const (
	validateTimeout = 10 * time.Second
	startTimeout    = 20 * time.Second
	// stopSlack is how long a Stop may take beyond its grace period.
	stopSlack     = 10 * time.Second
	removeTimeout = 10 * time.Second
	// recoverTimeout is Recover's deadline, and recoverPerTask more for
	// each task it is asked about.
	recoverTimeout = 30 * time.Second
	recoverPerTask = 20 * time.Millisecond
	listTimeout    = 30 * time.Second
	// deleteGiveUp: a deletion its runtime has not carried out this long
	// after the grace period is carried out by the controller itself (see
	// forceDelete), so that a DELETE always completes.
	deleteGiveUp = 30 * time.Second
)

// call runs fn with a deadline of d (within parent) and reports the
// runtime as stuck if the deadline, not parent's end, cut it short.
func (c *Manager) call(parent context.Context, runtime, what string, d time.Duration, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, d)
	defer cancel()
	began := time.Now()
	err := fn(ctx)
	key := runtime + "\x00" + what
	c.answeredMu.Lock()
	if c.answered == nil {
		c.answered = map[string]time.Time{}
	}
	timedOut := err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && parent.Err() == nil
	busy := c.answered[key].After(began)
	if !timedOut {
		c.answered[key] = time.Now()
	}
	c.answeredMu.Unlock()
	if timedOut && busy {
		c.log.Warn("a runtime call ran past its deadline while others of its kind were answered; the plugin is busy, not stuck",
			"runtime", runtime, "call", what, "timeout", d.String())
	}
	if timedOut && !busy {
		why := fmt.Sprintf("%s did not answer within %s", what, d)
		c.log.Error("a runtime plugin is stuck; restarting it", "runtime", runtime, "call", what, "timeout", d.String())
		if c.cfg.Stuck != nil {
			c.cfg.Stuck(runtime, why)
		}
	}
	return err
}

// killHolders SIGKILLs the processes that have dir (or anything under it)
// as their working directory or open, and their process groups: what a
// runtime that keeps a task's supervisor and files in the task's directory
// (every built-in one) leaves running there, when the runtime itself can no
// longer be asked to stop the task. The executor itself is spared. It
// returns how many processes it killed.
func killHolders(dir string) int {
	dir = filepath.Clean(dir)
	under := func(p string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }
	self, group := os.Getpid(), syscall.Getpgrp()
	entries, _ := os.ReadDir("/proc")
	killed := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		holds := false
		if cwd, err := os.Readlink(filepath.Join(base, "cwd")); err == nil && under(strings.TrimSuffix(cwd, " (deleted)")) {
			holds = true
		}
		if !holds {
			fds, _ := os.ReadDir(filepath.Join(base, "fd"))
			for _, fd := range fds {
				if l, err := os.Readlink(filepath.Join(base, "fd", fd.Name())); err == nil && under(strings.TrimSuffix(l, " (deleted)")) {
					holds = true
					break
				}
			}
		}
		if !holds || !live(base) {
			continue
		}
		if pgid, err := syscall.Getpgid(pid); err == nil && pgid > 1 && pgid != group {
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
		killed++
	}
	return killed
}

// live reports whether the process of /proc/<pid> is alive (not a
// zombie).
func live(base string) bool {
	b, err := os.ReadFile(filepath.Join(base, "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z'
}
