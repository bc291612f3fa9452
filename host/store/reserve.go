package store

import (
	"errors"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// A full disk must not keep the API from freeing space: a DELETE writes a
// deletion record before it is acknowledged, and a task's final state is
// recorded when it ends. So the store keeps a little space of its own, a
// file of reserveBytes allocated ahead, and gives it up when one of those
// writes finds the disk full; creates never use it, and get their 507. The
// file is allocated again once there is room (after a task's removal).

const (
	reserveFile  = ".reserve"
	reserveBytes = 1 << 20
)

// reserve is the space the store keeps for deletions and final states.
type reserve struct {
	path string
	mu   sync.Mutex
}

func newReserve(dir string) *reserve { return &reserve{path: filepath.Join(dir, reserveFile)} }

// keep allocates the reserve unless it is there; it reports whether it
// is. Without room (or on a file system without fallocate) it leaves no
// partial file behind.
func (r *reserve) keep() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if fi, err := os.Stat(r.path); err == nil && fi.Size() == reserveBytes {
		return true
	}
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false
	}
	err = unix.Fallocate(int(f.Fd()), 0, 0, reserveBytes)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(r.path)
		return false
	}
	return true
}

// full reports whether the disk has less room left than the reserve.
func (r *reserve) full() bool {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(r.path), &st); err != nil {
		return false
	}
	return int64(st.Bavail)*st.Bsize < reserveBytes
}

// release frees the reserve; it reports whether there was one to free.
func (r *reserve) release() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return os.Remove(r.path) == nil
}

// orRelease runs op, and once more after freeing the reserve if op found
// the disk full.
func (r *reserve) orRelease(op func() error) error {
	err := op()
	if errors.Is(err, ErrNoSpace) && r.release() {
		err = op()
	}
	return err
}
