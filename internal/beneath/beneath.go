// Package beneath opens files below a directory without following symbolic
// links, so that a path inside the data directory that someone replaced
// with a link (a task's directory, a file in it) never has the executor
// read or write anything outside it.
package beneath

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLink is returned for a path that holds a symbolic link.
var ErrLink = errors.New("the path holds a symbolic link, which is never followed")

// OpenFile opens rel, a relative path below root, as os.OpenFile would,
// refusing (ErrLink) to follow a symbolic link anywhere in rel and to leave
// root. root itself is resolved as given.
func OpenFile(root, rel string, flag int, perm os.FileMode) (*os.File, error) {
	if filepath.IsAbs(rel) || rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("%s is not below %s", rel, root)
	}
	name := filepath.Join(root, rel)
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	defer unix.Close(rootFD)
	fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
		Flags:   uint64(flag | unix.O_CLOEXEC),
		Mode:    uint64(perm.Perm()),
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOSYS) {
		return openWalking(root, rel, flag, perm)
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: ErrLink}
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// Open opens rel below root for reading (see OpenFile).
func Open(root, rel string) (*os.File, error) { return OpenFile(root, rel, os.O_RDONLY, 0) }

// ReadFile reads rel below root (see OpenFile).
func ReadFile(root, rel string) ([]byte, error) {
	f, err := Open(root, rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// openWalking is OpenFile for kernels without openat2 (before 5.6): every
// component is checked with lstat, then the file is opened with O_NOFOLLOW.
// A link swapped in between the two is not caught there.
func openWalking(root, rel string, flag int, perm os.FileMode) (*os.File, error) {
	cur := root
	parts := strings.Split(filepath.Clean(rel), string(filepath.Separator))
	for _, p := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, p)
		fi, err := os.Lstat(cur)
		if err != nil {
			return nil, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return nil, &fs.PathError{Op: "open", Path: cur, Err: ErrLink}
		}
	}
	f, err := os.OpenFile(filepath.Join(root, rel), flag|unix.O_NOFOLLOW, perm)
	if errors.Is(err, unix.ELOOP) {
		return nil, &fs.PathError{Op: "open", Path: filepath.Join(root, rel), Err: ErrLink}
	}
	return f, err
}

// IsDir reports whether rel below root is a directory itself, not a link
// to one.
func IsDir(root, rel string) (bool, error) {
	fi, err := os.Lstat(filepath.Join(root, rel))
	if err != nil {
		return false, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return false, &fs.PathError{Op: "lstat", Path: filepath.Join(root, rel), Err: ErrLink}
	}
	return fi.IsDir(), nil
}
