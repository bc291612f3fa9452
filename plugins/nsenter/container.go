package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// markerVar marks the main container's processes, the way the existing
// controller's pod templates set it: SANDBOX_MAIN_CONTAINER=<name>.
const markerVar = "SANDBOX_MAIN_CONTAINER"

// reasonNotFound is the waiting reason of a task whose main container is
// not (yet) there.
const reasonNotFound = "MainContainerNotFound"

// mainContainer places tasks in the main container: its oldest process
// whose environment holds the marker and that is not one of ours (tasks run
// there inherit the marker with its environment).
type mainContainer struct {
	log    hclog.Logger
	name   string
	marker []byte
	// ours are executables whose processes and their descendants are never
	// the main container: the shim (tasks descend from it) and this plugin.
	ours map[string]bool

	mu     sync.Mutex
	cached *mainProcess
}

// mainProcess is the main container's process as last found.
type mainProcess struct {
	pid   int
	start uint64 // with pid, names the process unambiguously
	env   []string
	dir   string
}

func (m *mainContainer) Init(cfg sdk.Config) error {
	m.name = cfg.Settings[sdk.SettingMainContainerName]
	if m.name == "" {
		m.name = "main"
	}
	m.marker = []byte(markerVar + "=" + m.name)
	m.ours = map[string]bool{}
	if p, err := shimdriver.FindShim(); err == nil {
		m.ours[p] = true
	}
	if exe, err := os.Executable(); err == nil {
		m.ours[exe] = true
	}
	return nil
}

func (m *mainContainer) Place(_ context.Context, _ sdk.Task) (shimdriver.Place, error) {
	mp := m.find()
	if mp == nil {
		return shimdriver.Place{}, &shimdriver.NotReady{Reason: reasonNotFound, Message: fmt.Sprintf(
			"no process of the main container (environment %s=%s) is running yet; the task starts as soon as one is", markerVar, m.name)}
	}
	fd, err := unix.PidfdOpen(mp.pid, 0)
	// The pidfd is taken first and the identity checked after: if the
	// start time still matches, the pidfd names the main process, not one
	// that reused its PID.
	if err != nil || !running(mp.pid, mp.start) {
		if err == nil {
			unix.Close(fd)
		}
		m.forget(mp)
		return shimdriver.Place{}, &shimdriver.NotReady{Reason: reasonNotFound, Message: "the main container's process has just exited"}
	}
	return shimdriver.Place{Env: mp.env, Dir: mp.dir, Namespaces: os.NewFile(uintptr(fd), "main container")}, nil
}

func (m *mainContainer) forget(mp *mainProcess) {
	m.mu.Lock()
	if m.cached == mp {
		m.cached = nil
	}
	m.mu.Unlock()
}

// find returns the main container's process: the one found last, while it
// lives, else a new scan of /proc (a restarted main container has a new one).
func (m *mainContainer) find() *mainProcess {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.cached; c != nil && running(c.pid, c.start) {
		return c
	}
	m.cached = nil
	entries, err := os.ReadDir("/proc")
	if err != nil {
		m.log.Error("cannot read /proc", "error", err)
		return nil
	}
	var best *mainProcess
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// Some environments (PID 1's, say) cannot be read even by root:
		// they are not the main container's.
		b, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !hasEntry(b, m.marker) {
			continue
		}
		start := procStart(pid)
		if start == 0 || (best != nil && start >= best.start) || !running(pid, start) || m.isOurs(pid) {
			continue
		}
		best = &mainProcess{pid: pid, start: start, env: splitEnv(b)}
	}
	if best == nil {
		return nil
	}
	best.dir = "/"
	if cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", best.pid)); err == nil && filepath.IsAbs(cwd) {
		best.dir = cwd // as seen inside the container
	}
	m.log.Info("found the main container", "name", m.name, "pid", best.pid)
	m.cached = best
	return best
}

// isOurs reports whether pid is the executor (this plugin or its host) or
// descends from this plugin or a shim (tasks do).
func (m *mainContainer) isOurs(pid int) bool {
	if pid == os.Getppid() {
		return true
	}
	self := os.Getpid()
	for p := pid; p > 1; p = procPPID(p) {
		if p == self {
			return true
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p)); err == nil && m.ours[exe] {
			return true
		}
	}
	return false
}

// hasEntry reports whether a NUL-separated environment holds entry exactly.
func hasEntry(environ, entry []byte) bool {
	for _, kv := range bytes.Split(environ, []byte{0}) {
		if bytes.Equal(kv, entry) {
			return true
		}
	}
	return false
}

func splitEnv(environ []byte) []string {
	var out []string
	for _, kv := range strings.Split(string(environ), "\x00") {
		if kv != "" {
			out = append(out, kv)
		}
	}
	return out
}

// procStat returns the fields of /proc/<pid>/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// procStart returns a process's start time in clock ticks since boot, or 0.
func procStart(pid int) uint64 {
	f := procStat(pid)
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// running reports whether pid is still the process that started at start,
// and has not exited (a killed main process stays a zombie until its parent
// reaps it, and cannot be entered).
func running(pid int, start uint64) bool {
	f := procStat(pid)
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v == start
}

// procPPID returns a process's parent, or 0.
func procPPID(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	v, _ := strconv.Atoi(f[1])
	return v
}
