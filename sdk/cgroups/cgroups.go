// Package cgroups gives each process task a cgroup of its own, the way the
// kubelet gives each container one: the task's memory and CPU limits are
// enforced by the kernel, its usage is counted apart from the executor's,
// and every process it leaves behind, whatever it did to its process group
// or session, can be found and killed.
//
// It handles cgroup v1 (the memory, cpu and cpuacct hierarchies, co-mounted
// or not), pure cgroup v2, and the "hybrid" layout where v1 holds the
// controllers and an empty v2 hierarchy sits beside it. A Manager owns one
// parent cgroup in each hierarchy it uses; a Group is one task's cgroup under
// it. Nothing here logs: what an operator should know comes back as errors
// and Manager.Warnings.
package cgroups

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrUnavailable is wrapped by every error that means this host cannot give
// tasks cgroups at all (none mounted, read-only, no permission), so that a
// caller can tell it apart from a single task's failure and, if it chooses,
// run tasks without cgroups.
var ErrUnavailable = errors.New("cgroups unavailable")

// The kubelet's and the kernel's constants, so that a task's limits are the
// ones it would have had as a container.
const (
	defaultPeriodMicros = 100000  // kubelet's QuotaPeriod
	minQuotaMicros      = 1000    // kubelet's MinQuotaPeriod; the kernel's least quota
	minPeriodMicros     = 1000    // the kernel accepts periods of 1 ms..
	maxPeriodMicros     = 1000000 // ..to 1 s
	minShares           = 2       // kubelet's MinShares; the kernel's too
	maxShares           = 262144  // kubelet's MaxShares; the kernel's too
	defaultShares       = 1024    // the kernel's default cpu.shares
	defaultWeight       = 100     // the kernel's default cpu.weight
)

// pollInterval is how long Kill and Remove wait between looks at a cgroup:
// short, since a caller usually waits on them to report a task's end.
const pollInterval = 10 * time.Millisecond

// Limits are what a cgroup enforces, in the kernel's units.
type Limits struct {
	// MemoryBytes caps the task's memory; beyond it the kernel's OOM killer
	// picks a process of the task. 0: no limit.
	MemoryBytes int64
	// CPUQuotaMicros is how much CPU time the task may use in each
	// CPUPeriodMicros (CFS bandwidth control). Quota 0: no limit; period 0:
	// the kubelet's 100000 µs.
	CPUQuotaMicros, CPUPeriodMicros int64
	// CPUShares is the task's weight against its siblings when the CPU is
	// contended, in cgroup v1 shares. 0 leaves the kernel default (1024
	// shares, weight 100). On v2 it is converted to cpu.weight as the
	// kubelet and runc do: weight = 1 + ((shares-2)*9999)/262142.
	CPUShares int64
}

// LimitsFor maps Kubernetes requests and limits to Limits the way the kubelet
// does for a container, so that a process task gets the same treatment as
// one: a CPU limit becomes a CFS quota over a 100 ms period (at least 1 ms);
// the CPU request (the limit when there is no request, as the API server
// would have defaulted it) becomes shares, at least 2, which is also what a
// BestEffort task without either gets; the memory limit becomes MemoryBytes.
// Memory requests have no cgroup counterpart and are ignored.
func LimitsFor(r corev1.ResourceRequirements) Limits {
	var l Limits
	cpuLimit, hasCPULimit := r.Limits[corev1.ResourceCPU]
	if hasCPULimit {
		if q := milliCPUToQuota(cpuLimit.MilliValue(), defaultPeriodMicros); q > 0 {
			l.CPUQuotaMicros, l.CPUPeriodMicros = q, defaultPeriodMicros
		}
	}
	var milli int64
	if req, ok := r.Requests[corev1.ResourceCPU]; ok {
		milli = req.MilliValue()
	} else if hasCPULimit {
		milli = cpuLimit.MilliValue()
	}
	l.CPUShares = milliCPUToShares(milli)
	if mem, ok := r.Limits[corev1.ResourceMemory]; ok && mem.Value() > 0 {
		l.MemoryBytes = mem.Value()
	}
	return l
}

// milliCPUToQuota is the kubelet's MilliCPUToQuota, saturating instead of
// overflowing on absurd quantities (the kernel then rejects the quota).
func milliCPUToQuota(milli, period int64) int64 {
	if milli <= 0 {
		return 0
	}
	if milli > math.MaxInt64/period {
		return math.MaxInt64
	}
	return max(milli*period/1000, minQuotaMicros)
}

// milliCPUToShares is the kubelet's MilliCPUToShares.
func milliCPUToShares(milli int64) int64 {
	if milli <= 0 {
		return minShares
	}
	if milli > maxShares*1000/1024 {
		return maxShares
	}
	return min(max(milli*1024/1000, minShares), maxShares)
}

// sharesToWeight converts v1 shares to a v2 cpu.weight with the formula the
// kubelet and runc use, so a task weighs the same against containers on a
// v2 node as on a v1 one. Shares outside what the kernel accepts are clamped
// first, as the v1 kernel would.
func sharesToWeight(shares int64) int64 {
	if shares == 0 {
		return defaultWeight
	}
	shares = min(max(shares, minShares), maxShares)
	return 1 + ((shares-2)*9999)/262142
}

// Usage is what a task's cgroup has used.
type Usage struct {
	// CPUSeconds is the CPU time the task's processes used (v1
	// cpuacct.usage, v2 cpu.stat usage_usec); 0 without a cpuacct hierarchy.
	CPUSeconds float64
	// MemoryBytes is the memory charged to the task now (v1
	// memory.usage_in_bytes, v2 memory.current), page cache included as the
	// kernel counts it against the limit.
	MemoryBytes int64
	// MemoryPeakBytes is the most it was ever charged (v1
	// memory.max_usage_in_bytes, v2 memory.peak); 0 if the kernel keeps no
	// such count.
	MemoryPeakBytes int64
}

// Manager makes task cgroups under one parent cgroup in every hierarchy that
// has the memory, cpu or cpuacct controller (v1), or in the unified hierarchy
// when it is v2 with the memory and cpu controllers (pure v2, or hybrid where
// v1 has neither). It holds no state that changes, so one Manager may serve
// any number of goroutines, and a restarted executor finds its tasks' cgroups
// again with a new Manager made with the same arguments.
type Manager struct {
	trees    []tree
	warnings []string
}

// New finds the cgroup hierarchies from /proc/self/cgroup and
// /proc/self/mountinfo and makes the parent cgroup in each.
//
// parent "" is the calling process's own cgroup joined with
// "task-executor-"+id, so that tasks are accounted inside the executor's own
// limits, as a pod's containers are inside the pod's; an absolute parent
// (e.g. "/task-executor") is taken from the root of each hierarchy as this
// process sees it (its cgroup namespace's root) and used as it is, so
// executors that share a host must not share an absolute parent. id tells
// apart executors that run in one cgroup; a short hash of the data directory
// keeps it stable across restarts.
//
// On v2 the memory and cpu controllers are enabled from the top of the
// hierarchy down to the parent where they are not yet; that fails, by the
// kernel's no-internal-process rule, at a cgroup that has processes of its
// own, which is the usual case of parent "" on a v2 host: the error says so.
//
// The error wraps ErrUnavailable when no usable hierarchy exists or the
// parent cannot be made or written (read-only cgroupfs, no permission).
func New(parent, id string) (*Manager, error) {
	cgData, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("%w: while reading the executor's cgroups: %w", ErrUnavailable, err)
	}
	cgs, err := ParseMemberships(cgData)
	if err != nil {
		return nil, fmt.Errorf("%w: while reading the executor's cgroups: %w", ErrUnavailable, err)
	}
	miData, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: while reading the mount table: %w", ErrUnavailable, err)
	}
	mounts, err := parseMountinfo(miData)
	if err != nil {
		return nil, fmt.Errorf("%w: while reading the mount table: %w", ErrUnavailable, err)
	}
	trees, warnings, err := selectTrees(cgs, mounts, parent, id, readControllers)
	if err != nil {
		return nil, err
	}
	return newManager(trees, warnings)
}

// newManager makes the parent cgroups of trees. It is New without the look
// at /proc, so that tests can point it at a directory tree of their own.
func newManager(trees []tree, warnings []string) (*Manager, error) {
	for _, t := range trees {
		if err := t.makeParent(); err != nil {
			return nil, err
		}
	}
	return &Manager{trees: trees, warnings: warnings}, nil
}

// Warnings says what the host's cgroups cannot do that a caller may expect,
// e.g. that no hierarchy has the memory controller, so memory limits are not
// enforced. An executor should show them to the operator once.
func (m *Manager) Warnings() []string {
	return slices.Clone(m.warnings)
}

// Parents returns the parent cgroup's directory in each hierarchy (absolute
// paths), for diagnostics and for a test's cleanup.
func (m *Manager) Parents() []string {
	dirs := make([]string, len(m.trees))
	for i, t := range m.trees {
		dirs[i] = t.dir(t.parent)
	}
	return dirs
}

// RemoveParents removes the parent cgroups, for a test's or an operator's
// cleanup once no task group is left under them. Only the parent itself is
// removed, not the ancestors New may have made with it, which other
// executors may share, and never a hierarchy's top. A parent that does not
// exist is not an error.
func (m *Manager) RemoveParents() error {
	var errs []error
	for _, t := range m.trees {
		if t.parent == t.mountRoot {
			continue
		}
		dir := t.dir(t.parent)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := rmdirRetry(ctx, dir)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("while removing the parent cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// Group is one task's cgroup: one directory in each hierarchy the Manager
// uses.
type Group struct {
	m    *Manager
	name string
	// limits are a spare's (see Spare).
	limits Limits
	// held are the group's counters opened when it was made (Spare), nil
	// once released.
	held atomic.Pointer[heldFiles]
}

// Group returns the task's cgroup, whether or not it exists yet: after a
// restart the executor gets it again to read its usage, kill or remove it.
// name must be a DNS-1123 subdomain (a Kubernetes object name), which also
// keeps it one directory below the parent; one that is a control file's name
// (e.g. "cgroup.procs") is refused by Create.
func (m *Manager) Group(name string) (*Group, error) {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, fmt.Errorf("while naming a task cgroup %q: %s", name, strings.Join(errs, "; "))
	}
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("while naming a task cgroup: %w", err)
	}
	return &Group{m: m, name: name}, nil
}

// path is the group's cgroup path in t.
func (g *Group) path(t tree) string {
	return path.Join(t.parent, g.name)
}

// Dirs returns the group's directories, one per hierarchy, in the order of
// Create's join files.
func (g *Group) Dirs() []string {
	dirs := make([]string, len(g.m.trees))
	for i, t := range g.m.trees {
		dirs[i] = t.dir(g.path(t))
	}
	return dirs
}

// Create makes the cgroup (it existing already is fine: a retried start),
// sets the limits and returns, per hierarchy, the file through which a
// process joins it, opened for writing (see JoinFile): the process that is
// to start the task's work joins before it does, so that all it does is
// counted. oom is the file that counts the cgroup's OOM kills (v1
// memory.oom_control, v2 memory.events, both with an "oom_kill N" line),
// opened for reading; nil when no hierarchy has the memory controller. The
// caller closes the files.
//
// Limits left at 0 are written as "no limit" and the kernel's default
// weight, so that a cgroup left over from an earlier task of the same name
// keeps nothing of that task's limits.
func (g *Group) Create(l Limits) (join []*os.File, oom *os.File, err error) {
	if err := l.validate(); err != nil {
		return nil, nil, fmt.Errorf("while creating cgroup %s: %w", g.name, err)
	}
	defer func() {
		if err != nil {
			for _, f := range join {
				f.Close()
			}
			if oom != nil {
				oom.Close()
			}
			join, oom = nil, nil
		}
	}()
	for _, t := range g.m.trees {
		dir := t.dir(g.path(t))
		if err := t.makeGroup(dir); err != nil {
			return join, oom, fmt.Errorf("while creating cgroup %s: %w", g.name, err)
		}
		if t.v2 {
			err = writeLimitsV2(dir, l)
		} else {
			err = writeLimitsV1(dir, t, nil, l)
		}
		if err != nil {
			return join, oom, fmt.Errorf("while setting the limits of cgroup %s: %w", g.name, err)
		}
		f, err := openFile(filepath.Join(dir, JoinFile(t.v2)), unix.O_WRONLY)
		if err != nil {
			return join, oom, fmt.Errorf("while opening cgroup %s: %w", g.name, err)
		}
		join = append(join, f)
		if counter := t.oomCounter(); counter != "" && oom == nil {
			if oom, err = openFile(filepath.Join(dir, counter), unix.O_RDONLY); err != nil {
				return join, oom, fmt.Errorf("while opening the OOM counter of cgroup %s: %w", g.name, err)
			}
		}
	}
	return join, oom, nil
}

// JoinFile is the control file through which a process joins a cgroup of
// v1 (v2 false) or v2: v1 "tasks", v2 "cgroup.procs". A single-threaded
// process joins by writing "0" to it; through v1 tasks that costs it
// microseconds, where writing another process's PID to cgroup.procs waits
// for an RCU grace period (milliseconds) holding the machine's cgroup lock,
// which every other cgroup change on the machine then waits for. On v1,
// writing a PID to tasks moves only that thread.
func JoinFile(v2 bool) string {
	if v2 {
		return "cgroup.procs"
	}
	return "tasks"
}

// makeGroup makes the cgroup directory dir in t (it existing is fine),
// ready to take processes.
func (t tree) makeGroup(dir string) error {
	err := mkdirCgroup(dir)
	if errors.Is(err, fs.ErrNotExist) {
		// The parent was removed since New (by an operator's cleanup):
		// make it again rather than fail every task.
		if err = t.makeParent(); err == nil {
			err = mkdirCgroup(dir)
		}
	}
	if err != nil {
		return err
	}
	if t.has("cpuset") {
		return inheritCpuset(dir)
	}
	return nil
}

// validate rejects what the kernel would reject, with a message that names
// the field instead of the kernel's bare EINVAL.
func (l Limits) validate() error {
	switch {
	case l.MemoryBytes < 0:
		return fmt.Errorf("negative memory limit %d", l.MemoryBytes)
	case l.CPUQuotaMicros < 0:
		return fmt.Errorf("negative CPU quota %d µs", l.CPUQuotaMicros)
	case l.CPUPeriodMicros != 0 && (l.CPUPeriodMicros < minPeriodMicros || l.CPUPeriodMicros > maxPeriodMicros):
		return fmt.Errorf("CPU period %d µs outside the kernel's %d..%d µs", l.CPUPeriodMicros, minPeriodMicros, maxPeriodMicros)
	case l.CPUQuotaMicros != 0 && l.CPUQuotaMicros < minQuotaMicros:
		return fmt.Errorf("CPU quota %d µs below the kernel's least, %d µs", l.CPUQuotaMicros, minQuotaMicros)
	case l.CPUShares < 0:
		return fmt.Errorf("negative CPU shares %d", l.CPUShares)
	}
	return nil
}

// period is the CFS period to write.
func (l Limits) period() int64 {
	if l.CPUPeriodMicros == 0 {
		return defaultPeriodMicros
	}
	return l.CPUPeriodMicros
}

// Stats reads what the task has used. If the cgroup does not exist, the
// error wraps fs.ErrNotExist.
func (g *Group) Stats() (Usage, error) {
	var u Usage
	held := g.held.Load()
	if held != nil {
		held.mu.Lock()
		defer held.mu.Unlock()
	}
	for _, t := range g.m.trees {
		if !t.v2 && !t.has("memory") && !t.has("cpuacct") {
			// Counts nothing; and on the path of a task's exit report
			// (its final usage) every look costs, its path's too.
			continue
		}
		dir := t.dir(g.path(t))
		var err error
		if t.v2 {
			err = statsV2(dir, &u)
		} else {
			err = statsV1(t, held.reader(dir), &u)
		}
		if err != nil {
			return Usage{}, fmt.Errorf("while reading the usage of cgroup %s: %w", g.name, err)
		}
	}
	return u, nil
}

// Kill SIGKILLs every process in the cgroup and in any cgroup below it,
// whatever it did to its process group or session, and returns once none is
// left, or with ctx's error when ctx ends first. A process that forks
// meanwhile is caught in the next round; on v2 with cgroup.kill the kernel
// does it all at once. A cgroup that does not exist is not an error.
func (g *Group) Kill(ctx context.Context) error {
	for {
		n, err := g.killRound()
		if err != nil {
			return fmt.Errorf("while killing the processes of cgroup %s: %w", g.name, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("while waiting for %d processes of cgroup %s to die: %w", n, g.name, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// killRound signals what is in the group now and returns how many processes
// were still in it.
func (g *Group) killRound() (int, error) {
	n := 0
	// Each process is in the group in every v1 hierarchy: once is enough.
	members := map[int]bool{}
	for _, t := range g.m.trees {
		cg := g.path(t)
		dir := t.dir(cg)
		byKernel := false
		if t.v2 {
			err := writeFile(dir, "cgroup.kill", "1")
			switch {
			case err == nil:
				byKernel = true
			case errors.Is(err, fs.ErrNotExist):
				// No such file before Linux 5.14, or no such cgroup:
				// the loop below tells which.
			default:
				return n, err
			}
		}
		dirs, err := cgroupDirs(dir)
		if err != nil {
			return n, err
		}
		for _, d := range dirs {
			pids, err := readPids(filepath.Join(d, "cgroup.procs"))
			if err != nil {
				return n, err
			}
			for _, pid := range pids {
				if members[pid] {
					continue
				}
				in, err := killMember(pid, t, cg, !byKernel)
				if err != nil {
					return n, err
				}
				if in {
					members[pid] = true
					n++
				}
			}
		}
	}
	return n, nil
}

// Remove kills the group's processes as Kill does and removes its
// directories, cgroups made below it included. It retries while the kernel
// still calls a cgroup busy, which it may for a moment after the last process
// exits, until ctx ends. A cgroup that does not exist is not an error.
func (g *Group) Remove(ctx context.Context) error {
	g.Release()
	for {
		if err := g.Kill(ctx); err != nil {
			return fmt.Errorf("while removing cgroup %s: %w", g.name, err)
		}
		busy, err := g.rmdirAll()
		if err != nil {
			return fmt.Errorf("while removing cgroup %s: %w", g.name, err)
		}
		if busy == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("while removing cgroup %s: %w (%w)", g.name, busy, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// rmdirAll removes every directory of the group, children first, and
// returns the last EBUSY, if any, apart from other errors.
func (g *Group) rmdirAll() (busy, err error) {
	for _, t := range g.m.trees {
		dirs, err := cgroupDirs(t.dir(g.path(t)))
		if err != nil {
			return nil, err
		}
		for _, d := range slices.Backward(dirs) {
			switch err := unix.Rmdir(d); {
			case err == nil, errors.Is(err, unix.ENOENT):
			case errors.Is(err, unix.EBUSY):
				busy = &fs.PathError{Op: "rmdir", Path: d, Err: err}
			default:
				return nil, &fs.PathError{Op: "rmdir", Path: d, Err: err}
			}
		}
	}
	return busy, nil
}

// rmdirRetry removes dir, retrying EBUSY until ctx ends.
func rmdirRetry(ctx context.Context, dir string) error {
	for {
		err := unix.Rmdir(dir)
		switch {
		case err == nil, errors.Is(err, unix.ENOENT):
			return nil
		case !errors.Is(err, unix.EBUSY):
			return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
		}
		select {
		case <-ctx.Done():
			return &fs.PathError{Op: "rmdir", Path: dir, Err: err}
		case <-time.After(pollInterval):
		}
	}
}

// killMember SIGKILLs pid (when signal is set) if it is in the cgroup cg of
// t, and tells whether it was. The check is made on a pidfd, so that a PID
// read from cgroup.procs, whose process has since died and whose number went
// to a process elsewhere, never gets that process killed.
func killMember(pid int, t tree, cg string, signal bool) (bool, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err == nil {
		defer unix.Close(fd)
	} else {
		fd = -1 // No pidfds (before Linux 5.3): the check then narrows the race only.
	}
	in, err := isMember(pid, t, cg)
	if err != nil || !in || !signal {
		return in, err
	}
	if fd >= 0 {
		err = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	} else {
		err = unix.Kill(pid, unix.SIGKILL)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		return true, fmt.Errorf("while killing process %d: %w", pid, err)
	}
	return true, nil
}

// isMember tells whether pid is in cg or below it in t, by its
// /proc/<pid>/cgroup.
func isMember(pid int, t tree, cg string) (bool, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("while reading the cgroups of process %d: %w", pid, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return false, nil // gone meanwhile
	}
	lines, err := ParseMemberships(b)
	if err != nil {
		return false, fmt.Errorf("while reading the cgroups of process %d: %w", pid, err)
	}
	for _, l := range lines {
		if t.matches(l) {
			return pathHasPrefix(l.Path, cg), nil
		}
	}
	return false, nil
}

// readPids reads a cgroup.procs file; a missing one (the cgroup is gone)
// holds no process.
func readPids(file string) ([]int, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("while listing the processes of a cgroup: %w", err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("while listing the processes of a cgroup: %s holds %q", file, f)
		}
		if pid > 0 { // 0: a process in a PID namespace that cannot see it.
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// cgroupDirs lists dir and every directory (cgroup) below it, parents first;
// none if dir does not exist.
func cgroupDirs(dir string) ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // gone meanwhile
			}
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("while listing the cgroups under %s: %w", dir, err)
	}
	return dirs, nil
}

// mkdirCgroup makes a cgroup's directory; it existing already is fine.
func mkdirCgroup(dir string) error {
	err := unix.Mkdir(dir, 0o755)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		// A control file of that name would exist too: make sure it is a
		// cgroup.
		if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
			return nil
		}
	}
	return &fs.PathError{Op: "mkdir", Path: dir, Err: err}
}

// validName rejects what cannot be one directory's name.
func validName(name string) error {
	switch {
	case name == "", name == ".", name == "..":
		return fmt.Errorf("%q is no directory name", name)
	case strings.ContainsAny(name, "/\x00\n"):
		return fmt.Errorf("%q has a character no cgroup name may have", name)
	case len(name) > 255:
		return fmt.Errorf("%q is longer than a file name may be", name)
	}
	return nil
}

// openFile opens a cgroup file with O_CLOEXEC, so that no task inherits it.
func openFile(name string, flags int) (*os.File, error) {
	return os.OpenFile(name, flags|unix.O_CLOEXEC, 0)
}

// writeFile writes value to a cgroup's control file in one write(2), which
// is how the kernel takes it.
func writeFile(dir, name, value string) error {
	f, err := openFile(filepath.Join(dir, name), unix.O_WRONLY|unix.O_TRUNC)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("while writing %q to %s: %w", value, f.Name(), err)
	}
	return nil
}

// readInt reads a control file that holds one integer.
func readInt(dir, name string) (int64, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("while reading %s: %w", filepath.Join(dir, name), err)
	}
	return n, nil
}

// readKey reads the value of key from a flat-keyed file ("key value" lines,
// as cpu.stat, memory.events and memory.oom_control are).
func readKey(dir, name, key string) (int64, error) {
	file := filepath.Join(dir, name)
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("while reading %s in %s: %w", key, file, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("while reading %s: no %q line", file, key)
}

// Hierarchy is a cgroup hierarchy reached at a directory of this process's
// choosing: a mount of it, or /proc/self/fd/N of a detached mount (one a
// container's own /sys/fs/cgroup does not show, see NewAt).
type Hierarchy struct {
	// Dir shows the hierarchy's root cgroup.
	Dir string
	// V2 is the unified hierarchy; Controllers are a v1 one's, as
	// /proc/<pid>/cgroup names them.
	V2          bool
	Controllers []string
}

// NewAt is New for hierarchies the caller reaches itself, with the parent
// cgroup at parent (a path from each hierarchy's root) in every one: for
// example task groups below another container's cgroup, reached through
// mounts only the caller holds. It makes the parents as New does; a v2
// hierarchy is taken only if the parent can enable the memory and cpu
// controllers for its groups.
func NewAt(hs []Hierarchy, parent string) (*Manager, error) {
	if !strings.HasPrefix(parent, "/") || strings.ContainsAny(parent, "\x00\n") {
		return nil, fmt.Errorf("while choosing the parent cgroup: %q is not an absolute cgroup path", parent)
	}
	trees := make([]tree, 0, len(hs))
	for _, h := range hs {
		trees = append(trees, tree{v2: h.V2, controllers: slices.Clone(h.Controllers), mountRoot: "/", mountPoint: h.Dir, parent: path.Clean(parent)})
	}
	if len(trees) == 0 {
		return nil, fmt.Errorf("%w: no hierarchy given", ErrUnavailable)
	}
	return newManager(trees, nil)
}
