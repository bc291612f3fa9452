package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockFile is the file whose flock marks a data directory as in use. Task
// names cannot start with a dot, so it never collides with a task.
const lockFile = ".lock"

// lockDataDir takes the data directory for this process. Two executors on
// one directory would each start every task and write over each other's
// records (the create log first of all). The lock is a flock, which the
// kernel releases when the process ends however it ends, so a host killed
// with -9 leaves nothing to clean up. The file is opened read-only: a file
// open for writing would keep the directory from being remounted
// read-only.
func lockDataDir(dir string) (release func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("while creating the data directory: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("while opening the data directory's lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("the data directory %s is in use by another task-executor", dir)
		}
		return nil, fmt.Errorf("while locking the data directory %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}
