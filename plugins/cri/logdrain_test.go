package cri

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// TestLogWritten: whether anyone, this process or another, holds the log
// open for writing, as the kernel tells it.
func TestLogWritten(t *testing.T) {
	tests := []struct {
		name string
		// hold opens the log the way a writer would and returns what ends
		// that.
		hold func(t *testing.T, path string) func()
		want bool
	}{
		{"no-file", nil, false},
		{"closed", func(t *testing.T, path string) func() {
			if err := os.WriteFile(path, []byte("x\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			return func() {}
		}, false},
		{"open-for-reading", func(t *testing.T, path string) func() {
			if err := os.WriteFile(path, []byte("x\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			return func() { f.Close() }
		}, false},
		{"open-for-writing-here", func(t *testing.T, path string) func() {
			f := openForAppend(t, path)
			return func() { f.Close() }
		}, true},
		{"open-for-writing-by-another-process", func(t *testing.T, path string) func() {
			f := openForAppend(t, path)
			defer f.Close()
			cmd := exec.Command("sleep", "60")
			cmd.Stdout = f
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			return func() {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), logFile)
			if tc.hold != nil {
				release := tc.hold(t, path)
				defer release()
			}
			got, err := logWritten(path)
			if err != nil || got != tc.want {
				t.Fatalf("logWritten = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func openForAppend(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// TestAwaitLogClosed: the wait ends when the last writer closes the log;
// a log held open past logCloseFor ends it without, once for the handle.
func TestAwaitLogClosed(t *testing.T) {
	dir := t.TempDir()
	h := &handle{task: sdk.Task{Name: "t", Dir: dir}}
	writer := openForAppend(t, filepath.Join(dir, logFile))
	closed := make(chan time.Time, 1)
	go func() {
		time.Sleep(30 * time.Millisecond)
		closed <- time.Now()
		writer.Close()
	}()
	ok, err := h.awaitLogClosed(context.Background())
	if err != nil || !ok {
		t.Fatalf("awaitLogClosed = %v, %v; want true once the writer closed the log", ok, err)
	}
	select {
	case <-closed:
	default:
		t.Fatal("awaitLogClosed returned before the writer closed the log")
	}

	holder := openForAppend(t, filepath.Join(dir, logFile))
	defer holder.Close()
	began := time.Now()
	if ok, err := h.awaitLogClosed(context.Background()); err != nil || ok {
		t.Fatalf("awaitLogClosed = %v, %v on a log held open; want false", ok, err)
	}
	if waited := time.Since(began); waited < logCloseFor {
		t.Errorf("gave up after %v, want %v", waited, logCloseFor)
	}
	if !h.logHeld.Load() {
		t.Error("the handle does not remember its log was held")
	}
	ctx, cancel := context.WithTimeout(context.Background(), logCloseFor/2)
	defer cancel()
	if ok, err := h.awaitLogClosed(ctx); err != nil || ok || ctx.Err() != nil {
		t.Errorf("awaitLogClosed = %v, %v (ctx %v) the second time; want false at once", ok, err, ctx.Err())
	}
}
