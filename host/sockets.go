package host

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hashicorp/go-hclog"
)

// pluginSocketDir prepares the directory in which the plugins of the host
// on dataDir create their gRPC sockets, and returns it ("" for go-plugin's
// default, the system's temporary directory). A plugin that is killed, or
// that exits because its host was, leaves its socket file behind; with a
// directory of their own, the next host on the same data directory (one at
// a time: the lock) clears what the last one's plugins left, where
// otherwise a node would gather a file per crash in /tmp.
//
// The directory is under the system's temporary directory, named for the
// data directory, rather than inside the data directory: a plugin must be
// able to restart, and bind its socket, while the data directory is full
// or read-only.
func pluginSocketDir(dataDir string, log hclog.Logger) string {
	sum := sha256.Sum256([]byte(dataDir))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("task-executor-%x", sum[:8]))
	// A socket's path holds at most 107 bytes; go-plugin names a socket
	// "plugin" and up to 10 digits.
	if len(dir)+len("/plugin")+10 > 107 {
		return ""
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		log.Warn("cannot create the directory for plugin sockets; using the system's", "dir", dir, "error", err)
		return ""
	}
	// The name is predictable and the temporary directory shared: use only
	// a directory of ours that nobody else can write to.
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 || !ownedByUs(fi) {
		log.Warn("the directory for plugin sockets is not this user's own; using the system's", "dir", dir, "error", err)
		return ""
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		log.Warn("cannot read the directory for plugin sockets; using the system's", "dir", dir, "error", err)
		return ""
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			log.Warn("cannot remove a socket an earlier plugin left", "path", filepath.Join(dir, e.Name()), "error", err)
		}
	}
	return dir
}

func ownedByUs(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}
