package nsenter

import (
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/cgroups"
)

// hierarchy is one line of /proc/<pid>/cgroup: a cgroup hierarchy and the
// process's cgroup in it.
type hierarchy = cgroups.Membership

// hierarchyKey names h's hierarchy for the mount cache.
func hierarchyKey(h hierarchy) string {
	if h.V2 {
		return ""
	}
	return strings.Join(h.Controllers, ",")
}

// cgroupMounts reaches every cgroup hierarchy through mounts of its own:
// detached mounts (fsmount(2)), never attached anywhere, so nothing shows
// in any mount table and nothing is left behind. A container's own
// /sys/fs/cgroup shows only that container's cgroups, read-only; these show
// the whole hierarchy, which is what moving a process into another
// container's cgroup needs (with CAP_SYS_ADMIN, and on cgroup v2 a cgroup
// namespace that holds both containers).
type cgroupMounts struct {
	// taskID names the cgroup below main's in which tasks get cgroups of
	// their own (see shimdriver.CgroupID); "": none, tasks run in main's.
	taskID string

	// warnedTasks: the log has said why tasks cannot have cgroups of
	// their own.
	warnedTasks atomic.Bool

	mu     sync.Mutex
	mounts map[string]int // hierarchy key -> mount fd
}

// taskControllers are the v1 controllers of the hierarchies in which a task
// gets a cgroup of its own, below main's: where its limits and usage are.
// On cgroup v2 a task stays in main's cgroup: main's processes are in it,
// and the kernel lets a cgroup with processes hand no controller down.
var taskControllers = []string{"memory", "cpu", "cpuacct"}

// mount returns the fd of a detached mount of h's hierarchy.
func (m *cgroupMounts) mount(h hierarchy) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if fd, ok := m.mounts[hierarchyKey(h)]; ok {
		return fd, nil
	}
	fsType := "cgroup"
	if h.V2 {
		fsType = "cgroup2"
	}
	fsfd, err := unix.Fsopen(fsType, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("while opening a %s file system: %w", fsType, err)
	}
	defer unix.Close(fsfd)
	for _, c := range h.Controllers {
		if name, ok := strings.CutPrefix(c, "name="); ok {
			err = unix.FsconfigSetString(fsfd, "name", name)
			if err == nil {
				err = unix.FsconfigSetFlag(fsfd, "none")
			}
		} else {
			err = unix.FsconfigSetFlag(fsfd, c)
		}
		if err != nil {
			return -1, fmt.Errorf("while configuring a cgroup mount of %s: %w", hierarchyKey(h), err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("while mounting the cgroup hierarchy %q: %w", hierarchyKey(h), err)
	}
	fd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return -1, fmt.Errorf("while mounting the cgroup hierarchy %q: %w", hierarchyKey(h), err)
	}
	if m.mounts == nil {
		m.mounts = map[string]int{}
	}
	m.mounts[hierarchyKey(h)] = fd
	return fd, nil
}

// open returns, for every hierarchy process pid is in, its cgroup's
// join file (cgroups.JoinFile) opened for writing, and the file that counts OOM kills in
// its memory cgroup (nil without a memory controller). With a taskID, the
// hierarchies of taskControllers are left out of procs and given instead
// as tasks, the Manager of task cgroups below pid's (nil where they cannot
// be made there: the task then runs in pid's, and log says why once).
func (m *cgroupMounts) open(pid int, log hclog.Logger) (procs []*os.File, oom *os.File, tasks *cgroups.Manager, err error) {
	procs, oom, tasks, err = m.openAll(pid, m.taskID != "", log)
	if errors.Is(err, errNoTaskCgroups) {
		return m.openAll(pid, false, log)
	}
	return procs, oom, tasks, err
}

// errNoTaskCgroups: tasks cannot have cgroups below main's.
var errNoTaskCgroups = errors.New("no task cgroups below the main container's")

// openAll is open, with task cgroups or without.
func (m *cgroupMounts) openAll(pid int, withTasks bool, log hclog.Logger) (procs []*os.File, oom *os.File, tasks *cgroups.Manager, err error) {
	defer func() {
		if err != nil {
			for _, f := range append(procs, oom) {
				if f != nil {
					f.Close()
				}
			}
			procs, oom = nil, nil
		}
	}()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return nil, nil, nil, fmt.Errorf("while reading the main container's cgroups: %w", err)
	}
	hs, err := cgroups.ParseMemberships(b)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("while reading the main container's cgroups: %w", err)
	}
	v1Memory := slices.ContainsFunc(hs, func(h hierarchy) bool { return slices.Contains(h.Controllers, "memory") })
	var (
		taskHs []cgroups.Hierarchy
		// mainPath is main's cgroup in the hierarchies its tasks get
		// cgroups of their own in: its memory cgroup's, and those of
		// the other taskControllers that are at the same path (a
		// container's are; a process's that is no container's may not
		// be).
		mainPath string
	)
	for _, h := range hs {
		if !h.V2 && slices.Contains(h.Controllers, "memory") {
			mainPath = h.Path
		}
	}
	for _, h := range hs {
		if strings.HasPrefix(h.Path, "/..") {
			return nil, nil, nil, fmt.Errorf("the main container's cgroup %s is outside the executor's cgroup namespace (cgroup v2 gives each unprivileged container one of its own)", h.Path)
		}
		fd, err := m.mount(h)
		if err != nil {
			return nil, nil, nil, err
		}
		if withTasks && !h.V2 && h.Path == mainPath && slices.ContainsFunc(h.Controllers, func(c string) bool { return slices.Contains(taskControllers, c) }) {
			taskHs = append(taskHs, cgroups.Hierarchy{Dir: fmt.Sprintf("/proc/self/fd/%d", fd), Controllers: h.Controllers})
			continue
		}
		dir := strings.TrimPrefix(h.Path, "/")
		if dir == "" {
			dir = "."
		}
		f, err := openAt(fd, dir+"/"+cgroups.JoinFile(h.V2), unix.O_WRONLY)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("while opening the main container's cgroup %s in %q: %w", h.Path, hierarchyKey(h), err)
		}
		procs = append(procs, f)
		counter := ""
		switch {
		case slices.Contains(h.Controllers, "memory"):
			counter = "memory.oom_control"
		case h.V2 && !v1Memory:
			counter = "memory.events"
		}
		if counter != "" && oom == nil {
			// A cgroup without the file (the root cgroup) counts no OOM
			// kills of its own: the task's end is then told by its signal.
			if f, err := openAt(fd, dir+"/"+counter, unix.O_RDONLY); err == nil {
				oom = f
			}
		}
	}
	if len(taskHs) == 0 {
		return procs, oom, nil, nil
	}
	tasks, err = cgroups.NewAt(taskHs, path.Join(mainPath, "task-executor-"+m.taskID))
	if err != nil {
		if m.warnedTasks.CompareAndSwap(false, true) {
			log.Warn("tasks run in the main container's cgroups, without cgroups of their own (no limits, usage or kill of their own)", "error", err)
		}
		return procs, oom, nil, fmt.Errorf("%w: %w", errNoTaskCgroups, err)
	}
	return procs, oom, tasks, nil
}

func openAt(dirfd int, path string, flags int) (*os.File, error) {
	fd, err := unix.Openat(dirfd, path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}
