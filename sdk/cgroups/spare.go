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

// Making a cgroup and moving a process in costs tens of microseconds to
// milliseconds (see JoinFile), and takes the machine's cgroup lock. A
// spare is a cgroup made, and joined by a process (an idle shim), ahead of
// time; Adopt then makes it a task's by renaming it, which costs
// microseconds. cgroup v1 renames cgroups within their parent; v2 does not,
// and there a task's cgroup is made when it starts.

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
// will have: Adopt then writes nothing). It returns it with its join files
// (see JoinFile), opened for writing, which the caller has the spare's
// process join through, and closes.
func (m *Manager) Spare(l Limits) (g *Group, join []*os.File, err error) {
	if err := l.validate(); err != nil {
		return nil, nil, fmt.Errorf("while creating a spare cgroup: %w", err)
	}
	if !m.CanAdopt() {
		return nil, nil, errors.New("cgroups cannot be renamed on cgroup v2: no spares")
	}
	g = &Group{m: m, name: sparePrefix + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatUint(spareOrdinal.Add(1), 10), limits: l}
	held := &heldFiles{}
	g.held.Store(held)
	defer func() {
		if err != nil {
			for _, f := range join {
				f.Close()
			}
			_ = g.Remove(context.Background())
			g, join = nil, nil
		}
	}()
	for _, t := range m.trees {
		dir := t.dir(g.path(t))
		if err := t.makeGroup(dir); err != nil {
			return g, join, fmt.Errorf("while creating a spare cgroup: %w", err)
		}
		if err := writeLimitsV1(dir, t, &Limits{}, l); err != nil {
			return g, join, fmt.Errorf("while setting the limits of a spare cgroup: %w", err)
		}
		if err := held.holdCounters(t, dir); err != nil {
			return g, join, err
		}
		f, err := openFile(filepath.Join(dir, JoinFile(false)), unix.O_WRONLY)
		if err != nil {
			return g, join, fmt.Errorf("while opening a spare cgroup: %w", err)
		}
		join = append(join, f)
	}
	return g, join, nil
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
	// The files the spare holds are the group's now; its OOM counter is
	// the caller's.
	if held := spare.held.Swap(nil); held != nil {
		oom, held.oom = held.oom, nil
		g.held.Store(held)
	}
	defer func() {
		if err != nil && oom != nil {
			oom.Close()
			oom = nil
		}
	}()
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
