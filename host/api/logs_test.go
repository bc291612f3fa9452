package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/logs"
	"github.com/opensandbox/task-executor/host/logs/logstest"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// outputTasks is a task table of tasks whose directories are under root.
type outputTasks struct {
	listOnly
	root  string
	ended map[string]chan struct{}
}

func (o *outputTasks) Await(name string) (tasks.Task, <-chan struct{}, bool) {
	ch, ok := o.ended[name]
	if !ok {
		return tasks.Task{}, nil, false
	}
	return tasks.Task{Name: name}, ch, true
}

func (o *outputTasks) Dir(name string) string { return filepath.Join(o.root, name) }

// newOutputTasks makes one task directory per name; ended tasks get a
// closed channel.
func newOutputTasks(t *testing.T, running bool, names ...string) *outputTasks {
	t.Helper()
	o := &outputTasks{root: t.TempDir(), ended: map[string]chan struct{}{}}
	for _, n := range names {
		if err := os.MkdirAll(o.Dir(n), 0o700); err != nil {
			t.Fatal(err)
		}
		o.ended[n] = make(chan struct{})
		if !running {
			close(o.ended[n])
		}
	}
	return o
}

func (o *outputTasks) write(t *testing.T, task, file, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(o.Dir(task), file), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (o *outputTasks) appendTo(t *testing.T, task, file, content string) {
	t.Helper()
	logstest.Append(t, filepath.Join(o.Dir(task), file), content)
}

func logsHandler(o *outputTasks, stop <-chan struct{}) http.Handler {
	return Handler(o, hclog.NewNullLogger(), WithLogs(o, stop))
}

func getLogs(t *testing.T, h http.Handler, path string) (int, string, string) {
	t.Helper()
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
	return w.Code, w.Header().Get("Content-Type"), w.Body.String()
}

// TestLogsTailOfALongLine: tailLines on output with no newline serves the
// last pieces of it, never all of it (1 MiB here; a sparse file of GiBs
// is read no further either).
func TestLogsTailOfALongLine(t *testing.T) {
	o := newOutputTasks(t, false, "long")
	o.write(t, "long", sdk.StdoutLog, strings.Repeat("x", 4<<20))
	o.write(t, "long", sdk.StderrLog, "")
	h := logsHandler(o, nil)
	for _, n := range []int{1, 3} {
		code, _, body := getLogs(t, h, fmt.Sprintf("/tasks/long/logs?tailLines=%d", n))
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if code != 200 || len(body) > n*(logs.MaxLineBytes+1) || len(lines) != n {
			t.Errorf("tailLines=%d: %d, %d bytes in %d lines; want %d lines of at most %d bytes", n, code, len(body), len(lines), n, logs.MaxLineBytes)
		}
	}
}

func TestLogsRefusals(t *testing.T) {
	o := newOutputTasks(t, false, "t1")
	h := logsHandler(o, nil)
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/tasks/nope/logs", http.StatusNotFound},
		{"/tasks/t1/logs?stream=both", http.StatusBadRequest},
		{"/tasks/t1/logs?follow=maybe", http.StatusBadRequest},
		{"/tasks/t1/logs?tailLines=-1", http.StatusBadRequest},
		{"/tasks/t1/logs?tailLines=x", http.StatusBadRequest},
		{"/tasks/t1/logs?limitBytes=0", http.StatusBadRequest},
		{"/tasks/t1/logs?limitBytes=1e3", http.StatusBadRequest},
		{"/tasks/t1/logs?limitBytes=99999999999999999999", http.StatusBadRequest},
	} {
		code, ct, body := getLogs(t, h, tc.path)
		var e Error
		if code != tc.code || ct != "application/json" || json.Unmarshal([]byte(body), &e) != nil || e.Code != tc.code || e.Message == "" {
			t.Errorf("%s: %d %s %s, want a JSON %d", tc.path, code, ct, body, tc.code)
		}
	}
	// A task whose directory is gone (deleted meanwhile).
	if err := os.RemoveAll(o.Dir("t1")); err != nil {
		t.Fatal(err)
	}
	if code, _, body := getLogs(t, h, "/tasks/t1/logs"); code != http.StatusNotFound {
		t.Errorf("without a directory: %d %s", code, body)
	}
}

// TestLogsServed: plain files and container logs, rotated or not, with
// every parameter, of tasks that have terminated.
func TestLogsServed(t *testing.T) {
	o := newOutputTasks(t, false, "t1", "empty", "nostderr", "c1", "p", "c")
	o.write(t, "t1", sdk.StdoutLog, "a\nb\nc\n")
	o.write(t, "t1", sdk.StderrLog, "x\ny") // unterminated last line
	o.write(t, "empty", sdk.StdoutLog, "")
	o.write(t, "empty", sdk.StderrLog, "")
	o.write(t, "nostderr", sdk.StdoutLog, "only\n")
	// Empty plain files are there too: the container log wins.
	o.write(t, "c1", sdk.StdoutLog, "")
	o.write(t, "c1", sdk.StderrLog, "")
	o.write(t, "c1", sdk.ContainerLog, logstest.CRI(
		"stdout F one",
		"stderr P err-",
		"stdout P tw",
		"!not a record",
		"stdout F o",
		"stderr F line",
		"stdout F three",
		"stderr P unterminated",
	)+"2024-05-01T10:00:00Z stdout F torn record without its newline")
	// Output rotated aside under the output cap (<file>.1) is served
	// before the current file, for plain and CRI logs alike.
	o.write(t, "p", sdk.StdoutLog+sdk.RotatedSuffix, "a\nb\n")
	o.write(t, "p", sdk.StdoutLog, "c\n")
	o.write(t, "p", sdk.StderrLog+sdk.RotatedSuffix, "x\n")
	o.write(t, "p", sdk.StderrLog, "y\n")
	o.write(t, "c", sdk.ContainerLog+sdk.RotatedSuffix, logstest.CRI("stdout F one", "stdout P tw"))
	o.write(t, "c", sdk.ContainerLog, logstest.CRI("stdout F o", "stderr F err"))
	h := logsHandler(o, nil)
	for _, tc := range []struct{ path, want string }{
		{"/tasks/t1/logs", "a\nb\nc\nx\ny\n"},
		{"/tasks/t1/logs?stream=all", "a\nb\nc\nx\ny\n"},
		{"/tasks/t1/logs?stream=stdout", "a\nb\nc\n"},
		{"/tasks/t1/logs?stream=stderr", "x\ny\n"},
		{"/tasks/t1/logs?tailLines=1", "y\n"},
		{"/tasks/t1/logs?tailLines=3", "c\nx\ny\n"},
		{"/tasks/t1/logs?tailLines=0", ""},
		{"/tasks/t1/logs?tailLines=100", "a\nb\nc\nx\ny\n"},
		{"/tasks/t1/logs?stream=stdout&tailLines=2", "b\nc\n"},
		{"/tasks/t1/logs?stream=stderr&tailLines=1", "y\n"},
		{"/tasks/t1/logs?limitBytes=3", "a\nb"},
		{"/tasks/t1/logs?limitBytes=1000", "a\nb\nc\nx\ny\n"},
		{"/tasks/t1/logs?stream=stdout&tailLines=2&limitBytes=2", "b\n"},
		{"/tasks/t1/logs?follow=true", "a\nb\nc\nx\ny\n"}, // terminated: the stream ends at once
		{"/tasks/t1/logs?follow=true&tailLines=2", "x\ny\n"},
		{"/tasks/empty/logs", ""},
		{"/tasks/nostderr/logs", "only\n"},
		{"/tasks/c1/logs", "one\ntwo\nerr-line\nthree\nunterminated\n"},
		{"/tasks/c1/logs?stream=stdout", "one\ntwo\nthree\n"},
		{"/tasks/c1/logs?stream=stderr", "err-line\nunterminated\n"},
		{"/tasks/c1/logs?tailLines=2", "three\nunterminated\n"},
		{"/tasks/c1/logs?stream=stdout&tailLines=2", "two\nthree\n"},
		{"/tasks/c1/logs?tailLines=0", ""},
		{"/tasks/c1/logs?limitBytes=6", "one\ntw"},
		{"/tasks/c1/logs?follow=true", "one\ntwo\nerr-line\nthree\nunterminated\n"},
		{"/tasks/p/logs", "a\nb\nc\nx\ny\n"},
		{"/tasks/p/logs?stream=stdout&tailLines=2", "b\nc\n"},
		{"/tasks/p/logs?tailLines=3", "c\nx\ny\n"},
		{"/tasks/p/logs?follow=true", "a\nb\nc\nx\ny\n"},
		// A partial record at the end of the rotated file goes on in the
		// current one.
		{"/tasks/c/logs", "one\ntwo\nerr\n"},
		{"/tasks/c/logs?stream=stdout&tailLines=1", "two\n"},
		{"/tasks/c/logs?follow=true", "one\ntwo\nerr\n"},
	} {
		code, ct, body := getLogs(t, h, tc.path)
		if code != http.StatusOK || ct != "text/plain; charset=utf-8" || body != tc.want {
			t.Errorf("%s: %d %s %q, want %q", tc.path, code, ct, body, tc.want)
		}
	}
}

// follow serves o's logs and requests path, reading the answer line by
// line until the test ends.
func (o *outputTasks) follow(t *testing.T, path string) logstest.Lines {
	t.Helper()
	srv := httptest.NewServer(logsHandler(o, nil))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
	}
	return logstest.ReadLines(resp.Body)
}

func TestLogsFollowPlain(t *testing.T) {
	o := newOutputTasks(t, true, "r1")
	o.write(t, "r1", sdk.StdoutLog, "before\n")
	o.write(t, "r1", sdk.StderrLog, "")
	lines := o.follow(t, "/tasks/r1/logs?follow=true")
	lines.Expect(t, "before")
	// Each line shows while the task runs; a line is held until it ends.
	o.appendTo(t, "r1", sdk.StderrLog, "err 1\n")
	lines.Expect(t, "err 1")
	o.appendTo(t, "r1", sdk.StdoutLog, "out ")
	o.appendTo(t, "r1", sdk.StdoutLog, "2\nlast, unterminated")
	lines.Expect(t, "out 2")
	// After the task has ended, the stream ends.
	close(o.ended["r1"])
	lines.Expect(t, "last, unterminated")
	lines.ExpectEnd(t)
}

func TestLogsFollowFindsContainerLog(t *testing.T) {
	o := newOutputTasks(t, true, "c1")
	o.write(t, "c1", sdk.StdoutLog, "")
	o.write(t, "c1", sdk.StderrLog, "")
	lines := o.follow(t, "/tasks/c1/logs?follow=true&stream=stdout")
	o.appendTo(t, "c1", sdk.ContainerLog, logstest.CRI("stdout P hel", "stderr F not this"))
	o.appendTo(t, "c1", sdk.ContainerLog, logstest.CRI("stdout F lo"))
	lines.Expect(t, "hello")
	close(o.ended["c1"])
	lines.ExpectEnd(t)
}

func TestLogsFollowLimitEnds(t *testing.T) {
	o := newOutputTasks(t, true, "r1")
	o.write(t, "r1", sdk.StdoutLog, "")
	lines := o.follow(t, "/tasks/r1/logs?follow=true&limitBytes=4")
	o.appendTo(t, "r1", sdk.StdoutLog, "abcdef\n")
	lines.Expect(t, "abcd")
	// limitBytes is reached: the stream ends.
	lines.ExpectEnd(t)
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestLogsFollowReleases: a follow that ends because its client went away
// or because the server stops leaves no goroutine and no descriptor.
func TestLogsFollowReleases(t *testing.T) {
	for _, how := range []string{"client gone", "server stops"} {
		t.Run(how, func(t *testing.T) {
			o := newOutputTasks(t, true, "r1")
			o.write(t, "r1", sdk.StdoutLog, "x\n")
			o.write(t, "r1", sdk.StderrLog, "")
			stop := make(chan struct{})
			h := logsHandler(o, stop)
			fds, goroutines := openFDs(t), runtime.NumGoroutine()

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req := httptest.NewRequest(http.MethodGet, "/tasks/r1/logs?follow=true", nil).WithContext(ctx)
			w := httptest.NewRecorder()
			done := make(chan struct{})
			go func() {
				defer close(done)
				h.ServeHTTP(w, req)
			}()
			// Following: both files and the inotify instance are open.
			deadline := time.Now().Add(10 * time.Second)
			for openFDs(t) < fds+3 {
				if time.Now().After(deadline) {
					t.Fatalf("the follower never opened its files: %d fds, %d before", openFDs(t), fds)
				}
				time.Sleep(time.Millisecond)
			}
			if how == "client gone" {
				cancel()
			} else {
				close(stop)
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the follow did not end")
			}
			if w.Body.String() != "x\n" {
				t.Fatalf("got %q", w.Body.String())
			}
			deadline = time.Now().Add(5 * time.Second)
			for openFDs(t) > fds || runtime.NumGoroutine() > goroutines {
				if time.Now().After(deadline) {
					t.Fatalf("left behind: %d fds (%d before), %d goroutines (%d before)",
						openFDs(t), fds, runtime.NumGoroutine(), goroutines)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}

// TestLogsOutputFilesNotYetThere: a task that has written nothing has no
// output files yet (runtimes create them at the first output): a snapshot
// is empty, and a follower picks the files up once they appear.
func TestLogsOutputFilesNotYetThere(t *testing.T) {
	o := newOutputTasks(t, true, "quiet")
	h := logsHandler(o, nil)
	if code, _, body := getLogs(t, h, "/tasks/quiet/logs"); code != http.StatusOK || body != "" {
		t.Fatalf("got %d %q, want 200 and nothing", code, body)
	}
	lines := o.follow(t, "/tasks/quiet/logs?follow=true")
	o.appendTo(t, "quiet", sdk.StderrLog, "err 1\n")
	lines.Expect(t, "err 1")
	o.appendTo(t, "quiet", sdk.StdoutLog, "out 1\n")
	lines.Expect(t, "out 1")
	close(o.ended["quiet"])
	lines.ExpectEnd(t)
}
