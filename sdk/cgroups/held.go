package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// A task's final usage is read the moment it exits, on the path of its exit
// report; the first open of a control file in a cgroup made moments before
// is a lookup the kernel has not cached, tens of microseconds each. A spare
// opens its counters when it is made, off that path, and the task reads
// them with pread. The files stay valid across Adopt's rename.

// heldFiles are a group's counters and OOM counter, opened ahead. They are
// plain descriptors, not os.Files: the runtime would register each with
// its poller (cgroup files can be polled), which costs more than the read.
type heldFiles struct {
	mu    sync.Mutex
	files map[string]heldFile // by control file name; nil once closed
	oom   *os.File            // until Adopt hands it over
}

// heldFile is an open control file.
type heldFile struct {
	fd   int
	path string
}

// holdCounters opens the counters of a cgroup in v1 hierarchy t, in dir,
// into h.
func (h *heldFiles) holdCounters(t tree, dir string) error {
	var names []string
	for controller, files := range counterFilesV1 {
		if t.has(controller) {
			names = append(names, files...)
		}
	}
	for _, name := range names {
		p := filepath.Join(dir, name)
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("while opening a counter of cgroup %s: %w", dir, &fs.PathError{Op: "open", Path: p, Err: err})
		}
		if h.files == nil {
			h.files = map[string]heldFile{}
		}
		h.files[name] = heldFile{fd: fd, path: p}
	}
	if counter := t.oomCounter(); counter != "" && h.oom == nil {
		p := filepath.Join(dir, counter)
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("while opening the OOM counter of cgroup %s: %w", dir, &fs.PathError{Op: "open", Path: p, Err: err})
		}
		h.oom = os.NewFile(uintptr(fd), p)
	}
	return nil
}

// close closes every file still held. The caller holds h.mu, or h is not
// shared yet.
func (h *heldFiles) close() {
	for _, f := range h.files {
		unix.Close(f.fd)
	}
	h.files = nil
	if h.oom != nil {
		h.oom.Close()
		h.oom = nil
	}
}

// reader reads a counter of dir: from its held file, or by path when none
// is held (h nil or released). The caller holds h.mu.
func (h *heldFiles) reader(dir string) func(name string) (int64, error) {
	return func(name string) (int64, error) {
		if h != nil {
			if f, ok := h.files[name]; ok {
				return f.readInt()
			}
		}
		return readInt(dir, name)
	}
}

// readInt reads a held control file that holds one integer.
func (f heldFile) readInt() (int64, error) {
	var b [64]byte
	n, err := unix.Pread(f.fd, b[:], 0)
	if err != nil {
		if errors.Is(err, unix.ENODEV) {
			// The cgroup was removed while the file was open.
			err = os.ErrNotExist
		}
		return 0, fmt.Errorf("while reading %s: %w", f.path, err)
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b[:n])), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("while reading %s: %w", f.path, err)
	}
	return v, nil
}

// Release closes the counters the group holds open since it was made as a
// spare; Stats reads by path afterwards. A task's driver releases them once
// it has read the task's final usage: each is a descriptor per running task.
// Remove releases them too.
func (g *Group) Release() {
	if h := g.held.Swap(nil); h != nil {
		h.mu.Lock()
		h.close()
		h.mu.Unlock()
	}
}
