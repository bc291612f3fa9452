package cgroups

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Moving a process into a cgroup (a write to cgroup.procs) makes the
// writer wait for an RCU grace period, milliseconds on a busy machine: on
// the path of a task's start that is most of what a cgroup costs. A spare
// is a cgroup made, and a process (an idle shim) moved into, ahead of time;
// Adopt then makes it a task's by renaming it, which costs microseconds.
// cgroup v1 renames cgroups within their parent; v2 does not, and there a
// task's cgroup is made when it starts.

// spareOrdinal tells apart the spares of one process's lifetime.
var spareOrdinal atomic.Uint64

// sparePrefix starts the name of every spare cgroup: a name no task can have
// (task names are DNS-1123 subdomains, without "_").
const sparePrefix = "_spare-"

// CanAdopt tells whether spares can be adopted here: every hierarchy used
// is cgroup v1.
func (m *Manager) CanAdopt() bool {
	for _, t := range m.trees {
		if t.v2 {
			return false
		}
	}
	return len(m.trees) > 0
}

// Spare makes a cgroup no task has yet, with limits l (those most tasks
// will have: Adopt then writes nothing), and moves process pid into it.
func (m *Manager) Spare(pid int, l Limits) (*Group, error) {
	if err := l.validate(); err != nil {
		return nil, fmt.Errorf("while creating a spare cgroup: %w", err)
	}
	if !m.CanAdopt() {
		return nil, errors.New("cgroups cannot be renamed on cgroup v2: no spares")
	}
	g := &Group{m: m, name: sparePrefix + strconv.Itoa(pid) + "-" + strconv.FormatUint(spareOrdinal.Add(1), 10), limits: l}
	ok := false
	defer func() {
		if !ok {
			_ = g.Remove(context.Background())
		}
	}()
	for _, t := range m.trees {
		dir := t.dir(g.path(t))
		if err := t.makeGroup(dir); err != nil {
			return nil, fmt.Errorf("while creating a spare cgroup: %w", err)
		}
		if err := writeLimitsV1(dir, t, &Limits{}, l); err != nil {
			return nil, fmt.Errorf("while setting the limits of a spare cgroup: %w", err)
		}
		if err := writeFile(dir, "cgroup.procs", strconv.Itoa(pid)); err != nil {
			return nil, fmt.Errorf("while moving process %d into a spare cgroup: %w", pid, err)
		}
	}
	ok = true
	return g, nil
}

// Adopt makes spare (from Spare) the group's own cgroup, with the process
// in it, and sets limits l; it returns the group's OOM counter as Create
// does (nil without a memory hierarchy). A cgroup of the group's name left
// from an earlier task of that name is removed first. Only the limits that
// differ from the spare's are written.
func (g *Group) Adopt(ctx context.Context, spare *Group, l Limits) (oom *os.File, err error) {
	if err := l.validate(); err != nil {
		return nil, fmt.Errorf("while adopting a spare cgroup for %s: %w", g.name, err)
	}
	if !strings.HasPrefix(spare.name, sparePrefix) || spare.m != g.m {
		return nil, fmt.Errorf("while adopting a spare cgroup for %s: %s is not a spare of this manager", g.name, spare.name)
	}
	for _, t := range g.m.trees {
		from, to := t.dir(spare.path(t)), t.dir(g.path(t))
		err := unix.Rename(from, to)
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EBUSY) {
			if rerr := g.Remove(ctx); rerr != nil {
				return nil, fmt.Errorf("while removing the cgroup an earlier %s left: %w", g.name, rerr)
			}
			err = unix.Rename(from, to)
		}
		if err != nil {
			return nil, fmt.Errorf("while adopting a spare cgroup for %s: %w", g.name, &fs.PathError{Op: "rename", Path: from, Err: err})
		}
	}
	for _, t := range g.m.trees {
		dir := t.dir(g.path(t))
		if err := writeLimitsV1(dir, t, &spare.limits, l); err != nil {
			return nil, fmt.Errorf("while setting the limits of cgroup %s: %w", g.name, err)
		}
		if counter := t.oomCounter(); counter != "" && oom == nil {
			if oom, err = openFile(filepath.Join(dir, counter), unix.O_RDONLY); err != nil {
				return nil, fmt.Errorf("while opening the OOM counter of cgroup %s: %w", g.name, err)
			}
		}
	}
	return oom, nil
}

// RemoveSpares removes the spares an earlier process left (its idle
// processes ended with it), killing whatever is still in them.
func (m *Manager) RemoveSpares(ctx context.Context) error {
	var errs []error
	seen := map[string]bool{}
	for _, t := range m.trees {
		entries, err := os.ReadDir(t.dir(t.parent))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), sparePrefix) || seen[e.Name()] {
				continue
			}
			seen[e.Name()] = true
			if err := (&Group{m: m, name: e.Name()}).Remove(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// shares is the cpu.shares that l sets.
func (l Limits) shares() int64 {
	if l.CPUShares == 0 {
		return defaultShares
	}
	return min(max(l.CPUShares, minShares), maxShares)
}
