package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// writeLimitsV1 sets want in a cgroup of v1 hierarchy t, for the
// controllers t has. With have, the limits the cgroup has (a new one: the
// zero Limits, the kernel's defaults), what is the same is not written:
// every write is a system call on the path of a task's start.
// memory.memsw.* is left alone: the kubelet does not set it either, and it
// does not exist where swap accounting is off.
func writeLimitsV1(dir string, t tree, have *Limits, want Limits) error {
	if t.has("memory") && (have == nil || want.MemoryBytes != have.MemoryBytes) {
		limit := "-1"
		if want.MemoryBytes > 0 {
			limit = strconv.FormatInt(want.MemoryBytes, 10)
		}
		if err := writeFile(dir, "memory.limit_in_bytes", limit); err != nil {
			return err
		}
	}
	if !t.has("cpu") {
		return nil
	}
	if have == nil || want.period() != have.period() || want.CPUQuotaMicros != have.CPUQuotaMicros {
		// The period first: the quota is checked against it.
		if err := writeFile(dir, "cpu.cfs_period_us", strconv.FormatInt(want.period(), 10)); err != nil {
			return err
		}
		quota := "-1"
		if want.CPUQuotaMicros > 0 {
			quota = strconv.FormatInt(want.CPUQuotaMicros, 10)
		}
		if err := writeFile(dir, "cpu.cfs_quota_us", quota); err != nil {
			return err
		}
	}
	if have == nil || want.shares() != have.shares() {
		if err := writeFile(dir, "cpu.shares", strconv.FormatInt(want.shares(), 10)); err != nil {
			return err
		}
	}
	return nil
}

// counterFilesV1 are the control files statsV1 reads in a hierarchy with
// controller.
var counterFilesV1 = map[string][]string{
	"memory":  {"memory.usage_in_bytes", "memory.max_usage_in_bytes"},
	"cpuacct": {"cpuacct.usage"},
}

// statsV1 adds what a cgroup of v1 hierarchy t counts to u, reading its
// counters with read.
func statsV1(t tree, read func(name string) (int64, error), u *Usage) error {
	if t.has("memory") {
		var err error
		if u.MemoryBytes, err = read("memory.usage_in_bytes"); err != nil {
			return err
		}
		if u.MemoryPeakBytes, err = read("memory.max_usage_in_bytes"); err != nil {
			return err
		}
	}
	if t.has("cpuacct") {
		ns, err := read("cpuacct.usage")
		if err != nil {
			return err
		}
		u.CPUSeconds = float64(ns) / 1e9
	}
	return nil
}

// inheritCpuset gives a new v1 cpuset cgroup its parent's CPUs and memory
// nodes: the kernel leaves them empty, and a cgroup with an empty cpuset
// takes no process (ENOSPC).
func inheritCpuset(dir string) error {
	for _, name := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("while reading the cpuset of %s: %w", dir, err)
		}
		if strings.TrimSpace(string(b)) != "" {
			continue
		}
		b, err = os.ReadFile(filepath.Join(filepath.Dir(dir), name))
		if err != nil {
			return fmt.Errorf("while reading the cpuset of %s: %w", filepath.Dir(dir), err)
		}
		if err := writeFile(dir, name, strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("while copying the parent's cpuset: %w", err)
		}
	}
	return nil
}

// accessWrite tells whether this process may make cgroups in dir: a
// directory that existed already may be read-only, or someone else's.
func accessWrite(dir string) error {
	if err := unix.Access(dir, unix.W_OK); err != nil {
		if errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EPERM) {
			return &fs.PathError{Op: "access", Path: dir, Err: err}
		}
		return fmt.Errorf("while checking %s: %w", dir, err)
	}
	return nil
}
