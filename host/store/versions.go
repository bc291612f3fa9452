package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// versionsFile holds the lease of resource versions: the highest version
// the host may hand out. A dot name: task names cannot start with one.
const versionsFile = ".resource-versions"

// VersionLease returns the last lease written (0 when none was): every
// resource version handed out so far is at most it.
func (s *Store) VersionLease() (uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, versionsFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("while reading the resource versions' lease: %w", classify(err))
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("while reading the resource versions' lease %s: %w", filepath.Join(s.dir, versionsFile), err)
	}
	return v, nil
}

// LeaseVersions durably records limit as the highest resource version the
// host may hand out. Written whole (a new file renamed over the old), so a
// crash leaves the old lease or the new one.
func (s *Store) LeaseVersions(limit uint64) error {
	if err := replaceFile(s.dir, versionsFile, []byte(strconv.FormatUint(limit, 10)+"\n")); err != nil {
		return fmt.Errorf("while recording the resource versions' lease: %w", classify(err))
	}
	return nil
}
