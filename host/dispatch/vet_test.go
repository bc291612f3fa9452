package dispatch

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestParseChecksums(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	cases := []struct {
		name  string
		in    string
		want  map[string]string
		error string
	}{
		{"sha256sum output", sum + "  process\n" + strings.Repeat("01", 32) + "  nsenter\n",
			map[string]string{"process": sum, "nsenter": strings.Repeat("01", 32)}, ""},
		{"binary mode and a directory", sum + " *bin/plugins/process\n\n", map[string]string{"process": sum}, ""},
		{"upper-case hex", strings.ToUpper(sum) + "  process", map[string]string{"process": sum}, ""},
		{"no name", sum + "\n", nil, "line 1"},
		{"short sum", "abcd  process\n", nil, "64 hex digits"},
		{"not hex", strings.Repeat("zz", 32) + "  process\n", nil, "not a SHA-256"},
		{"listed twice", sum + "  process\n" + sum + "  ./process\n", nil, "listed twice"},
		{"empty", "\n\n", nil, "no checksums"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseChecksums(strings.NewReader(c.in))
			if c.error != "" {
				if err == nil || !strings.Contains(err.Error(), c.error) {
					t.Fatalf("got %v, want an error saying %q", err, c.error)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %d entries, want %d", len(got), len(c.want))
			}
			for name, hx := range c.want {
				if hex.EncodeToString(got[name]) != hx {
					t.Fatalf("%s: got %x, want %s", name, got[name], hx)
				}
			}
		})
	}
}

// TestVetMissingFile: a plugin being replaced is retried, not refused.
func TestVetMissingFile(t *testing.T) {
	m := New(Config{}, hclog.NewNullLogger())
	if _, why, err := m.vet(filepath.Join(t.TempDir(), "gone")); err == nil || why != "" {
		t.Fatalf("got refusal %q, error %v; want an error and no refusal", why, err)
	}
}

func TestVet(t *testing.T) {
	dir := t.TempDir()
	content := []byte("#!/bin/sh\nexit 0\n")
	sum := sha256.Sum256(content)
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := write("good", 0o755)
	groupW := write("group-writable", 0o775)
	worldW := write("world-writable", 0o757)
	other := write("other-owner", 0o755)
	otherOwned := os.Geteuid() == 0 && os.Chown(other, 65534, 65534) == nil
	unlisted := write("unlisted", 0o755)
	changed := write("changed", 0o755)

	cases := []struct {
		name   string
		path   string
		pinned bool
		says   string // "" for accepted
	}{
		{"owner-writable only", good, false, ""},
		{"group-writable", groupW, false, "group- or world-writable"},
		{"world-writable", worldW, false, "group- or world-writable"},
		{"another user's", other, false, "owned by uid 65534"},
		{"matching checksum", good, true, ""},
		{"not in the checksum file", unlisted, true, "not listed"},
		{"different checksum", changed, true, "differs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.path == other && !otherOwned {
				t.Skip("needs root to give the file to another user")
			}
			cfg := Config{}
			if c.pinned {
				wrong := sha256.Sum256([]byte("something else"))
				cfg.Checksums = map[string][]byte{"good": sum[:], "changed": wrong[:]}
			}
			m := New(cfg, hclog.NewNullLogger())
			got, why, err := m.vet(c.path)
			if err != nil {
				t.Fatal(err)
			}
			if c.says == "" {
				if why != "" {
					t.Fatalf("refused: %s", why)
				}
				if c.pinned && string(got) != string(sum[:]) {
					t.Fatalf("got checksum %x to launch with, want %x", got, sum)
				}
				return
			}
			if !strings.Contains(why, c.says) {
				t.Fatalf("refusal %q, want one saying %q", why, c.says)
			}
		})
	}
}
