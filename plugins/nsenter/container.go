package nsenter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/internal/seccomp"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/shim"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// markerVar marks the main container's processes, the way the existing
// controller's pod templates set it: SANDBOX_MAIN_CONTAINER=<name>.
const markerVar = "SANDBOX_MAIN_CONTAINER"

// reasonNotFound is the waiting reason of a task whose main container is
// not (yet) there.
const reasonNotFound = "MainContainerNotFound"

// reasonMainRestarted ends a task whose main container ended under it: the
// task is killed with the container, as a process exec'ed into a container
// is (see shim.Spec.ContainerGone).
const reasonMainRestarted = "MainContainerRestarted"

// flagMorePrivileged is the host's flag that lets tasks run where they
// cannot be confined as main is; the messages name it.
const flagMorePrivileged = "--allow-sidecar-tasks-more-privileged-than-main"

// mainContainer places tasks in the main container: its oldest process
// whose environment holds the marker and that is not one of ours (tasks run
// there inherit the marker with its environment). A task gets what a
// process `kubectl exec`'ed into main gets: main's namespaces, user and
// groups, capabilities, no_new_privs, umask, LSM label, seccomp filters
// and cgroups (see confine).
type mainContainer struct {
	log    hclog.Logger
	name   string
	marker []byte
	// ours are executables whose processes and their descendants are never
	// the main container: the shim (tasks descend from it) and this plugin.
	ours map[string]bool
	// morePrivileged: run tasks even where part of main's confinement
	// cannot be given to them (the operator said so; see
	// sdk.SettingSidecarMorePrivileged).
	morePrivileged bool
	// self is this process's own identity and labels, which bound the
	// tasks'.
	self     status
	lsms     lsmEnabled
	selfLSM  lsm
	cgroups  cgroupMounts
	warnings []string

	mu     sync.Mutex
	cached *mainProcess
}

// mainProcess is the main container's process as last found.
type mainProcess struct {
	pid   int
	start uint64 // with pid, names the process unambiguously
	env   []string
	dir   string

	// What is learnt of it once: its seccomp filters (count is the number
	// the kernel reported when they were read: filters are only ever
	// added) and which shortfalls have been logged.
	mu           sync.Mutex
	filtersCount int
	filters      []shim.SeccompFilter
	filtersErr   error
	logged       map[string]bool
}

func (m *mainContainer) Init(cfg sdk.Config) error {
	m.name = cfg.Settings[sdk.SettingMainContainerName]
	if m.name == "" {
		m.name = "main"
	}
	if cfg.Settings[sdk.SettingTaskCgroups] != "off" {
		m.cgroups.taskID = shimdriver.CgroupID(cfg.DataDir, Name)
	}
	m.marker = []byte(markerVar + "=" + m.name)
	m.ours = map[string]bool{}
	if p, err := shimdriver.FindShim(); err == nil {
		m.ours[p] = true
		// A shim started from a link (/proc/self/fd/N, the executor's
		// shim in memory) shows the link's target as its exe.
		if target, err := os.Readlink(p); err == nil {
			m.ours[target] = true
		}
		if real, err := filepath.EvalSymlinks(p); err == nil {
			m.ours[real] = true
		}
	}
	if exe, err := os.Executable(); err == nil {
		m.ours[exe] = true
	}
	m.morePrivileged = cfg.Settings[sdk.SettingSidecarMorePrivileged] == "true"
	self, err := readStatus("self")
	if err != nil {
		return err
	}
	m.self = self
	m.lsms = detectLSMs()
	if m.selfLSM, err = readLSM("self", m.lsms); err != nil {
		return err
	}
	m.warnings = m.checkSelf()
	for _, w := range m.warnings {
		m.log.Warn(w)
	}
	return nil
}

// Warnings are what checkSelf found at Init (see shimdriver.Warner).
func (m *mainContainer) Warnings() []string { return m.warnings }

// checkSelf says what in the executor's own container keeps tasks from
// getting main's confinement, before any main container is there.
func (m *mainContainer) checkSelf() []string {
	consequence := "tasks are refused (StartError) unless the executor runs with " + flagMorePrivileged
	if m.morePrivileged {
		consequence = "tasks run anyway (" + flagMorePrivileged + ") and may do what the main container cannot"
	}
	var w []string
	if m.self.caps.Effective>>capSysAdmin&1 == 0 {
		w = append(w, "the executor lacks CAP_SYS_ADMIN: it can neither enter the main container's namespaces nor reach its cgroups, so no sidecar task can start")
	}
	if m.self.caps.Effective>>capSysPtrace&1 == 0 {
		w = append(w, "the executor lacks CAP_SYS_PTRACE: it cannot read the environment or the seccomp filter of a main container that runs as another user")
	}
	if m.self.seccompMode != 0 {
		w = append(w, "the executor runs under a seccomp filter of its own, so it cannot read the main container's (give its container seccompProfile: Unconfined): for a main container with a seccomp filter "+consequence)
	}
	if m.lsms.apparmor && m.selfLSM.apparmor != "unconfined" {
		w = append(w, fmt.Sprintf("the executor is confined by the AppArmor profile %q, which may keep it from reaching the main container's cgroups and from giving tasks main's profile (give its container appArmorProfile: Unconfined)", m.selfLSM.apparmor))
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err == nil {
		var hs []hierarchy
		if hs, err = cgroups.ParseMemberships(b); err == nil {
			for _, h := range hs {
				if _, err = m.cgroups.mount(h); err != nil {
					break
				}
			}
			if err == nil && len(hs) == 1 && hs[0].V2 && hs[0].Path == "/" {
				err = errors.New("the executor's container has a cgroup namespace of its own (cgroup v2 gives one to every unprivileged container), which does not hold the main container's cgroup: run the executor's container privileged")
			}
		}
	}
	if err != nil {
		w = append(w, fmt.Sprintf("tasks cannot be placed in the main container's cgroups (%v): %s", err, consequence))
	}
	return w
}

// TaskCgroups is where tasks get cgroups of their own now, below the main
// container's (shimdriver.CgroupFinder): how a restarted plugin finds the
// cgroups of tasks an earlier one started.
func (m *mainContainer) TaskCgroups(context.Context) (*cgroups.Manager, error) {
	mp := m.find()
	if mp == nil {
		return nil, errors.New("no process of the main container is running")
	}
	procs, oom, tasks, err := m.cgroups.open(mp.pid, m.log)
	for _, f := range append(procs, oom) {
		if f != nil {
			f.Close()
		}
	}
	if err == nil && tasks == nil {
		err = errors.New("tasks have no cgroups of their own here")
	}
	return tasks, err
}

func (m *mainContainer) Place(_ context.Context, task sdk.Task) (shimdriver.Place, error) {
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
	place := shimdriver.Place{
		Env: mp.env, Dir: mp.dir, Namespaces: os.NewFile(uintptr(fd), "main container"),
		ContainerGone: reasonMainRestarted,
	}
	if err := m.confine(mp, &place); err != nil {
		place.Close()
		if !running(mp.pid, mp.start) {
			m.forget(mp)
			return shimdriver.Place{}, &shimdriver.NotReady{Reason: reasonNotFound, Message: "the main container's process has just exited"}
		}
		if errors.As(err, new(*shimdriver.StartError)) {
			m.log.Warn("refusing a task", "task", task.Name, "reason", err)
		}
		return shimdriver.Place{}, err
	}
	return place, nil
}

// confine gives a task placed in mp everything a process started in main
// by the container runtime gets: main's user, groups and umask, its
// capabilities (within the executor's own), no_new_privs, LSM label and
// seccomp filters, its cgroup and user-visible namespaces. What cannot be
// given and would leave the task less confined than main is a shortfall:
// the task is refused unless the operator allowed it.
func (m *mainContainer) confine(mp *mainProcess, place *shimdriver.Place) error {
	pid := strconv.Itoa(mp.pid)
	st, err := readStatus(pid)
	if err != nil {
		return err
	}
	cred, missing := credentials(st, m.self)
	if missing != 0 {
		m.logOnce(mp, "caps", "the executor lacks some of the main container's capabilities; tasks run without them", "capabilities", capList(missing))
	}
	var shortfalls []string
	switch st.seccompMode {
	case 0:
	case 2:
		filters, err := m.filters(mp, st.seccompFilters)
		if err != nil {
			shortfalls = append(shortfalls, fmt.Sprintf("its seccomp filter cannot be read (%v)", err))
		}
		cred.Seccomp = filters
	default:
		shortfalls = append(shortfalls, "it runs in strict seccomp mode, which cannot be given to another process")
	}
	if m.lsms.apparmor || m.lsms.selinux {
		labels, err := readLSM(pid, m.lsms)
		if err != nil {
			return err
		}
		t := lsmTransition(labels, m.selfLSM)
		cred.AppArmorProfile, cred.SELinuxLabel = t.apparmor, t.selinux
	}
	flags, nsShort, err := namespaceFlags(mp.pid)
	if err != nil {
		return err
	}
	shortfalls = append(shortfalls, nsShort...)
	procs, oom, tasks, err := m.cgroups.open(mp.pid, m.log)
	if err != nil {
		shortfalls = append(shortfalls, fmt.Sprintf("the task cannot be placed in its cgroups: %v", err))
	}
	place.Credentials, place.NamespaceFlags, place.Cgroups, place.OOMCounter, place.TaskCgroups = &cred, flags, procs, oom, tasks
	if len(shortfalls) == 0 {
		return nil
	}
	why := strings.Join(shortfalls, "; ")
	if !m.morePrivileged {
		return &shimdriver.StartError{Message: fmt.Sprintf(
			"refused: the task would not be confined as the main container is: %s (give the executor's container what it lacks, see the README's Sidecar mode, or start the executor with %s)", why, flagMorePrivileged)}
	}
	m.logOnce(mp, why, "running tasks less confined than the main container, as allowed by "+flagMorePrivileged, "shortfalls", why)
	return nil
}

// filters returns main's seccomp filters, read once per main process (and
// again if it installs more).
func (m *mainContainer) filters(mp *mainProcess, count int) ([]shim.SeccompFilter, error) {
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if mp.filtersCount != count || mp.filtersErr != nil {
		mp.filters, mp.filtersErr = seccomp.ReadFilters(mp.pid)
		mp.filtersCount = count
		if mp.filtersErr == nil && len(mp.filters) != count {
			mp.filtersErr = fmt.Errorf("read %d seccomp filters where the kernel counts %d", len(mp.filters), count)
		}
		if mp.filtersErr == nil {
			m.log.Info("read the main container's seccomp filters", "pid", mp.pid, "filters", count)
		}
	}
	return mp.filters, mp.filtersErr
}

// logOnce logs a warning once per main process and key.
func (m *mainContainer) logOnce(mp *mainProcess, key, msg string, args ...any) {
	mp.mu.Lock()
	first := !mp.logged[key]
	if mp.logged == nil {
		mp.logged = map[string]bool{}
	}
	mp.logged[key] = true
	mp.mu.Unlock()
	if first {
		m.log.Warn(msg, append([]any{"pid", mp.pid}, args...)...)
	}
}

// namespaceFlags returns the namespaces of process pid a task enters:
// mount, UTS, IPC, network and PID always, its cgroup and time namespaces
// where they are not the executor's. A user namespace of its own is a
// shortfall: the executor does not enter one.
func namespaceFlags(pid int) (flags int, shortfalls []string, err error) {
	flags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWNET | unix.CLONE_NEWPID
	for _, ns := range []struct {
		name string
		flag int
	}{{"cgroup", unix.CLONE_NEWCGROUP}, {"time", unix.CLONE_NEWTIME}, {"user", unix.CLONE_NEWUSER}} {
		var self, theirs unix.Stat_t
		if err := unix.Stat("/proc/self/ns/"+ns.name, &self); errors.Is(err, unix.ENOENT) {
			continue // a kernel without that namespace
		} else if err != nil {
			return 0, nil, fmt.Errorf("while reading the executor's %s namespace: %w", ns.name, err)
		}
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns.name), &theirs); err != nil {
			return 0, nil, fmt.Errorf("while reading the main container's %s namespace: %w", ns.name, err)
		}
		if self.Ino == theirs.Ino && self.Dev == theirs.Dev {
			continue
		}
		if ns.flag == unix.CLONE_NEWUSER {
			shortfalls = append(shortfalls, "it runs in a user namespace of its own, which the executor does not enter")
			continue
		}
		flags |= ns.flag
	}
	return flags, shortfalls, nil
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

// pfExiting is the kernel's PF_EXITING task flag (/proc/<pid>/stat field 9).
const pfExiting = 0x4

// running reports whether pid is still the process that started at start,
// and has not exited (a killed main process stays a zombie until its parent
// reaps it, and cannot be entered).
func running(pid int, start uint64) bool {
	f := procStat(pid)
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return false
	}
	// A process on its way out (PF_EXITING) has already let go of its
	// namespaces before it turns zombie: no task can enter them.
	if flags, err := strconv.ParseUint(f[6], 10, 64); err != nil || flags&pfExiting != 0 {
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
