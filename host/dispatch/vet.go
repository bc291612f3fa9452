package dispatch

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A plugin runs with the host's privileges and sees every task, so the
// host launches only executables that nobody else could have swapped in:
// owned by root or the host's own user, writable by their owner alone and,
// when a checksum file is given, with the SHA-256 it lists.

// LoadChecksums reads a checksum file in the format sha256sum prints: one
// "<64 hex digits>  <name>" per line, name being the plugin's file name in
// the plugin directory (a leading directory, as in "bin/plugins/process",
// is ignored). Blank lines are skipped.
func LoadChecksums(path string) (map[string][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("while reading the plugin checksum file: %w", err)
	}
	defer f.Close()
	sums, err := ParseChecksums(f)
	if err != nil {
		return nil, fmt.Errorf("plugin checksum file %s: %w", path, err)
	}
	return sums, nil
}

// ParseChecksums parses what LoadChecksums reads.
func ParseChecksums(r io.Reader) (map[string][]byte, error) {
	sums := map[string][]byte{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		sum, name, ok := strings.Cut(line, " ")
		// sha256sum marks files read in binary mode with '*'.
		name = strings.TrimPrefix(strings.TrimLeft(name, " "), "*")
		if !ok || name == "" {
			return nil, fmt.Errorf("line %d: want \"<sha256 in hex>  <file name>\"", n)
		}
		b, err := hex.DecodeString(sum)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("line %d: %q is not a SHA-256 in hex (64 hex digits)", n, sum)
		}
		name = filepath.Base(name)
		if _, dup := sums[name]; dup {
			return nil, fmt.Errorf("line %d: %s is listed twice", n, name)
		}
		sums[name] = b
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("while reading: %w", err)
	}
	if len(sums) == 0 {
		return nil, fmt.Errorf("no checksums in it")
	}
	return sums, nil
}

// vet checks that the plugin executable at path may be launched. It
// returns why not, or its SHA-256 when a checksum file pins it (so that the
// launch checks the very file it starts against it). An error is a file
// that cannot be read right now (being replaced, say): worth a retry, not
// a refusal.
func (m *Manager) vet(path string) (sum []byte, refusal string, err error) {
	// Whoever may write to the directory may replace the file in it.
	dir := filepath.Dir(path)
	di, err := os.Stat(dir)
	if err != nil {
		return nil, "", fmt.Errorf("while inspecting the plugin directory: %w", err)
	}
	if why := writableByOthers(di); why != "" {
		return nil, fmt.Sprintf("its directory %s %s", dir, why), nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, "", fmt.Errorf("while inspecting the plugin executable: %w", err)
	}
	if why := writableByOthers(fi); why != "" {
		return nil, "it " + why, nil
	}
	if m.cfg.Checksums == nil {
		return nil, "", nil
	}
	want, ok := m.cfg.Checksums[filepath.Base(path)]
	if !ok {
		return nil, "it is not listed in the plugin checksum file", nil
	}
	got, err := fileSHA256(path)
	if err != nil {
		return nil, "", fmt.Errorf("while computing the plugin's SHA-256: %w", err)
	}
	if !bytes.Equal(got, want) {
		return nil, fmt.Sprintf("its SHA-256 %x differs from the plugin checksum file's %x", got, want), nil
	}
	return want, "", nil
}

// writableByOthers says why a file or directory could be changed by others
// than root and the host's user, or "" if it cannot.
func writableByOthers(fi os.FileInfo) string {
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Sprintf("is group- or world-writable (mode %04o); make it writable by its owner only (chmod go-w)", perm)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := int(st.Uid); uid != 0 && uid != os.Geteuid() {
			return fmt.Sprintf("is owned by uid %d, neither root nor the host's uid %d", uid, os.Geteuid())
		}
	}
	return ""
}

func fileSHA256(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// refuse records that the plugin at path will not be launched, under its
// file name and, if it ran before, its runtime's name, so that tasks for
// that runtime are told why it is missing.
func (m *Manager) refuse(path, runtime, reason string) {
	m.log.Error("refusing a runtime plugin; it will not be launched", "path", path, "reason", reason)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.refused[filepath.Base(path)] = reason
	if runtime != "" {
		m.refused[runtime] = reason
		if s := m.byName[runtime]; s != nil && s.path == path {
			delete(m.byName, runtime)
		}
	}
}

// Refused maps the runtimes whose plugins were refused (by file name, and
// by runtime name if it ran before) to the reason.
func (m *Manager) Refused() map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string, len(m.refused))
	for k, v := range m.refused {
		out[k] = v
	}
	return out
}
