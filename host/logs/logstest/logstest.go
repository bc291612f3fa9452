// Package logstest writes task logs (the files of sdk/logs.go) for the
// tests of the code that reads them, so that every such test writes them
// the same way.
package logstest

import (
	"bufio"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// CRI builds a container log (sdk.ContainerLog's format) of records given
// as "<stream> <tag> <text>", a millisecond apart. A record that begins
// with "!" is written as it is, without the "!": a malformed line.
func CRI(records ...string) string {
	var b strings.Builder
	ts := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	for i, r := range records {
		if raw, ok := strings.CutPrefix(r, "!"); ok {
			b.WriteString(raw + "\n")
			continue
		}
		b.WriteString(ts.Add(time.Duration(i)*time.Millisecond).Format(time.RFC3339Nano) + " " + r + "\n")
	}
	return b.String()
}

// Append adds content to the file at path, creating it (mode 0600, as a
// runtime does) if it is not there.
func Append(t testing.TB, path, content string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
}

// Lines are the lines of a log stream as a test reads them: a follower's.
type Lines <-chan string

// ReadLines reads r line by line, and closes it when it ends.
func ReadLines(r io.ReadCloser) Lines {
	ch := make(chan string)
	go func() {
		defer close(ch)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

// Next returns the next line, or false once the stream has ended; it fails
// the test when neither comes within 10s.
func (l Lines) Next(t testing.TB) (string, bool) {
	t.Helper()
	select {
	case s, ok := <-l:
		return s, ok
	case <-time.After(10 * time.Second):
		t.Fatal("no line within 10s")
		return "", false
	}
}

// Expect fails the test unless the next lines are want.
func (l Lines) Expect(t testing.TB, want ...string) {
	t.Helper()
	for _, w := range want {
		if s, ok := l.Next(t); !ok || s != w {
			t.Fatalf("got %q (stream open: %v), want %q", s, ok, w)
		}
	}
}

// ExpectEnd fails the test unless the stream ends, with no more lines.
func (l Lines) ExpectEnd(t testing.TB) {
	t.Helper()
	if s, ok := l.Next(t); ok {
		t.Fatalf("the stream goes on: %q", s)
	}
}
