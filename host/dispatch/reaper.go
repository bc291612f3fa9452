package dispatch

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Reap makes the host the reaper of the processes its plugins leave
// behind, until ctx ends. When a plugin dies, the shims it started are
// re-parented to the nearest "child subreaper" ancestor, or to PID 1 —
// which in a container may be the host itself, and elsewhere may not reap
// at all. Either way shims that later exit would stay zombies. The host
// reaps them, leaving its own plugin processes to go-plugin.
func (m *Manager) Reap(ctx context.Context) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		m.log.Warn("cannot become a child subreaper; orphaned shims will be reaped by PID 1", "error", err)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGCHLD)
	go func() {
		defer signal.Stop(sigs)
		// SIGCHLDs coalesce and one may arrive while a plugin launches (when
		// nothing is reaped): sweep now and then as well.
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sigs:
			case <-t.C:
			}
			m.reapOrphans()
		}
	}()
}

func (m *Manager) reapOrphans() {
	for _, pid := range children() {
		if !isZombie(pid) || m.isPlugin(pid) {
			continue
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil {
			m.log.Debug("reaped an orphaned process", "pid", pid)
		}
	}
}

// children lists the host's child processes.
func children() []int {
	paths, _ := filepath.Glob("/proc/self/task/*/children")
	var out []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}
