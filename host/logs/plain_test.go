package logs

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestJoinedReadAt: a log's parts read as one file, across the boundaries
// between them, and short where a part shrank since Open.
func TestJoinedReadAt(t *testing.T) {
	dir := t.TempDir()
	parts := joined{filePart(t, dir, "a", "abc"), filePart(t, dir, "b", ""), filePart(t, dir, "c", "defg")}
	if n := parts.size(); n != 7 {
		t.Fatalf("size %d, want 7", n)
	}
	for _, tc := range []struct {
		off  int64
		n    int
		want string
		eof  bool
	}{
		{0, 7, "abcdefg", false},
		{1, 4, "bcde", false},
		{3, 2, "de", false},
		{5, 4, "fg", true},
		{7, 1, "", true},
	} {
		b := make([]byte, tc.n)
		n, err := parts.ReadAt(b, tc.off)
		if string(b[:n]) != tc.want || (err == io.EOF) != tc.eof || (err != nil && err != io.EOF) {
			t.Errorf("ReadAt(%d bytes at %d): %q %v, want %q (EOF: %v)", tc.n, tc.off, b[:n], err, tc.want, tc.eof)
		}
	}
	// A part shorter now than at Open ends what can be read.
	parts[0].size = 5
	b := make([]byte, 6)
	if n, err := parts.ReadAt(b, 0); string(b[:n]) != "abc" || err != io.EOF {
		t.Errorf("past a shrunk part: %q %v, want \"abc\" and EOF", b[:n], err)
	}
}

func TestTailOffset(t *testing.T) {
	for _, tc := range []struct {
		content string
		n       int
		off     int64
		found   int
	}{
		{"", 3, 0, 0},
		{"a\nb\n", 0, 4, 0},
		{"a\nb\n", 1, 2, 1},
		{"a\nb\n", 2, 0, 2},
		{"a\nb\n", 5, 0, 2},
		{"a\nb", 1, 2, 1},
		{"\n\n", 1, 1, 1},
		{"\n\n", 3, 0, 2},
		{strings.Repeat("x", readChunk*2+5) + "\nlast\n", 1, readChunk*2 + 6, 1},
		{"y\n" + strings.Repeat("x", readChunk*3), 2, 0, 2},
		// Bounded: n lines are at most n × MaxLineBytes from the end, however
		// long the line they are cut from.
		{strings.Repeat("x", MaxLineBytes*4+7), 1, MaxLineBytes*3 + 7, 1},
		{strings.Repeat("x", MaxLineBytes*4+7), 2, MaxLineBytes*2 + 7, 2},
		{strings.Repeat("x", MaxLineBytes*4+7), 9, 0, 5},
		{"a\n" + strings.Repeat("x", MaxLineBytes*4) + "\nb\n", 2, MaxLineBytes*3 + 2, 2},
		{"a\n" + strings.Repeat("x", MaxLineBytes*4) + "\nb\n", 5, 2, 5},
		{"a\n" + strings.Repeat("x", MaxLineBytes*4) + "\nb\n", 6, 0, 6},
	} {
		off, found, err := tailOffset(strings.NewReader(tc.content), int64(len(tc.content)), tc.n)
		if err != nil || off != tc.off || found != tc.found {
			t.Errorf("%.20q n=%d: %d %d %v, want %d %d", tc.content, tc.n, off, found, err, tc.off, tc.found)
		}
	}
}

func filePart(t *testing.T, dir, name, content string) part {
	t.Helper()
	writeFile(t, dir, name, content)
	p, err := openPart(filepath.Join(dir, name), true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.close)
	return p
}
