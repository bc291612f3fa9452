package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// writeLimitsV2 sets l in a v2 cgroup.
func writeLimitsV2(dir string, l Limits) error {
	limit, swap := "max", "max"
	if l.MemoryBytes > 0 {
		// Swap off for a limited task, as the kubelet does when the node
		// has no swap for pods: otherwise the limit only moves the task's
		// memory to swap instead of ending it.
		limit, swap = strconv.FormatInt(l.MemoryBytes, 10), "0"
	}
	if err := writeFile(dir, "memory.max", limit); err != nil {
		return err
	}
	// No such file when the kernel accounts no swap.
	if err := writeFile(dir, "memory.swap.max", swap); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	quota := "max"
	if l.CPUQuotaMicros > 0 {
		quota = strconv.FormatInt(l.CPUQuotaMicros, 10)
	}
	if err := writeFile(dir, "cpu.max", quota+" "+strconv.FormatInt(l.period(), 10)); err != nil {
		return err
	}
	return writeFile(dir, "cpu.weight", strconv.FormatInt(sharesToWeight(l.CPUShares), 10))
}

// statsV2 reads what a v2 cgroup counts into u.
func statsV2(dir string, u *Usage) error {
	var err error
	if u.MemoryBytes, err = readInt(dir, "memory.current"); err != nil {
		return err
	}
	// memory.peak came with Linux 5.19.
	if u.MemoryPeakBytes, err = readInt(dir, "memory.peak"); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		u.MemoryPeakBytes = 0
	}
	usec, err := readKey(dir, "cpu.stat", "usage_usec")
	if err != nil {
		return err
	}
	u.CPUSeconds = float64(usec) / 1e6
	return nil
}

// enableControllers makes the cgroups from the mount point down to the
// parent where missing, and enables memory and cpu for the children of each
// where they are not yet: a v2 cgroup has a controller only if its parent's
// cgroup.subtree_control enables it.
func (t tree) enableControllers() error {
	for _, dir := range t.chain() {
		if err := mkdirCgroup(dir); err != nil {
			return fmt.Errorf("%w: while creating the parent cgroup: %w", ErrUnavailable, err)
		}
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
		if err != nil {
			return fmt.Errorf("%w: while reading the controllers enabled in %s: %w", ErrUnavailable, dir, err)
		}
		missing := missingOf(v2Controllers, strings.Fields(string(b)))
		if len(missing) == 0 {
			continue
		}
		avail, err := readControllers(dir)
		if err != nil {
			return fmt.Errorf("%w: while reading the controllers of %s: %w", ErrUnavailable, dir, err)
		}
		if no := missingOf(missing, avail); len(no) > 0 {
			return fmt.Errorf("%w: cgroup %s has no %s controller to give its children: its parent does not enable it", ErrUnavailable, dir, strings.Join(no, " or "))
		}
		// The kernel refuses with EBUSY; telling it beforehand lets the
		// message name the processes' cgroup. The root cgroup, which has no
		// cgroup.type, is exempt.
		if _, err := os.Stat(filepath.Join(dir, "cgroup.type")); err == nil {
			pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
			if err != nil {
				return fmt.Errorf("%w: while enabling controllers in %s: %w", ErrUnavailable, dir, err)
			}
			if len(pids) > 0 {
				return internalProcessError(dir, pids)
			}
		}
		var enable []string
		for _, c := range missing {
			enable = append(enable, "+"+c)
		}
		if err := writeFile(dir, "cgroup.subtree_control", strings.Join(enable, " ")); err != nil {
			if errors.Is(err, unix.EBUSY) {
				pids, _ := readPids(filepath.Join(dir, "cgroup.procs"))
				return internalProcessError(dir, pids)
			}
			return fmt.Errorf("%w: while enabling controllers in %s: %w", ErrUnavailable, dir, err)
		}
	}
	return nil
}

// internalProcessError explains the no-internal-process rule to an operator.
func internalProcessError(dir string, pids []int) error {
	shown := pids[:min(len(pids), 5)]
	ids := make([]string, len(shown))
	for i, p := range shown {
		ids[i] = strconv.Itoa(p)
	}
	if len(pids) > len(shown) {
		ids = append(ids, "...")
	}
	who := ""
	if slices.Contains(pids, os.Getpid()) {
		who = ", the executor among them"
	}
	return fmt.Errorf("%w: while enabling memory and cpu for the children of cgroup %s: it has processes of its own (%s%s), and cgroup v2 gives no controller to the children of a cgroup that has processes (the no-internal-process rule); run the executor in a leaf cgroup of its own, or give it a parent cgroup outside its own", ErrUnavailable, dir, strings.Join(ids, " "), who)
}
