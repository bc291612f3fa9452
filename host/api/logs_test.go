package api

import (
	"bufio"
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

	"github.com/opensandbox/task-executor/host/tasks"
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
	f, err := os.OpenFile(filepath.Join(o.Dir(task), file), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
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
	o.write(t, "long", stdoutFile, strings.Repeat("x", 4<<20))
	o.write(t, "long", stderrFile, "")
	h := logsHandler(o, nil)
	for _, n := range []int{1, 3} {
		code, _, body := getLogs(t, h, fmt.Sprintf("/tasks/long/logs?tailLines=%d", n))
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		if code != 200 || len(body) > n*(maxLineBytes+1) || len(lines) != n {
			t.Errorf("tailLines=%d: %d, %d bytes in %d lines; want %d lines of at most %d bytes", n, code, len(body), len(lines), n, maxLineBytes)
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

func TestLogsPlain(t *testing.T) {
	o := newOutputTasks(t, false, "t1", "empty", "nostderr")
	o.write(t, "t1", stdoutFile, "a\nb\nc\n")
	o.write(t, "t1", stderrFile, "x\ny") // unterminated last line
	o.write(t, "empty", stdoutFile, "")
	o.write(t, "empty", stderrFile, "")
	o.write(t, "nostderr", stdoutFile, "only\n")
	h := logsHandler(o, nil)
	for _, tc := range []struct{ query, want string }{
		{"", "a\nb\nc\nx\ny\n"},
		{"?stream=all", "a\nb\nc\nx\ny\n"},
		{"?stream=stdout", "a\nb\nc\n"},
		{"?stream=stderr", "x\ny\n"},
		{"?tailLines=1", "y\n"},
		{"?tailLines=3", "c\nx\ny\n"},
		{"?tailLines=0", ""},
		{"?tailLines=100", "a\nb\nc\nx\ny\n"},
		{"?stream=stdout&tailLines=2", "b\nc\n"},
		{"?stream=stderr&tailLines=1", "y\n"},
		{"?limitBytes=3", "a\nb"},
		{"?limitBytes=1000", "a\nb\nc\nx\ny\n"},
		{"?stream=stdout&tailLines=2&limitBytes=2", "b\n"},
		{"?follow=true", "a\nb\nc\nx\ny\n"}, // terminated: the stream ends at once
		{"?follow=true&tailLines=2", "x\ny\n"},
	} {
		code, ct, body := getLogs(t, h, "/tasks/t1/logs"+tc.query)
		if code != http.StatusOK || ct != "text/plain; charset=utf-8" || body != tc.want {
			t.Errorf("%s: %d %s %q, want %q", tc.query, code, ct, body, tc.want)
		}
	}
	if _, _, body := getLogs(t, h, "/tasks/empty/logs"); body != "" {
		t.Errorf("empty: %q", body)
	}
	if _, _, body := getLogs(t, h, "/tasks/nostderr/logs"); body != "only\n" {
		t.Errorf("no stderr.log: %q", body)
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
		// Bounded: n lines are at most n × maxLineBytes from the end, however
		// long the line they are cut from.
		{strings.Repeat("x", maxLineBytes*4+7), 1, maxLineBytes*3 + 7, 1},
		{strings.Repeat("x", maxLineBytes*4+7), 2, maxLineBytes*2 + 7, 2},
		{strings.Repeat("x", maxLineBytes*4+7), 9, 0, 5},
		{"a\n" + strings.Repeat("x", maxLineBytes*4) + "\nb\n", 2, maxLineBytes*3 + 2, 2},
		{"a\n" + strings.Repeat("x", maxLineBytes*4) + "\nb\n", 5, 2, 5},
		{"a\n" + strings.Repeat("x", maxLineBytes*4) + "\nb\n", 6, 0, 6},
	} {
		off, found, err := tailOffset(strings.NewReader(tc.content), int64(len(tc.content)), tc.n)
		if err != nil || off != tc.off || found != tc.found {
			t.Errorf("%.20q n=%d: %d %d %v, want %d %d", tc.content, tc.n, off, found, err, tc.off, tc.found)
		}
	}
}

func TestLogsCRI(t *testing.T) {
	o := newOutputTasks(t, false, "c1")
	// The store's empty plain files are there too: the container log wins.
	o.write(t, "c1", stdoutFile, "")
	o.write(t, "c1", stderrFile, "")
	o.write(t, "c1", containerFile, crilog(
		"stdout F one",
		"stderr P err-",
		"stdout P tw",
		"!not a record",
		"stdout F o",
		"stderr F line",
		"stdout F three",
		"stderr P unterminated",
	)+"2024-05-01T10:00:00Z stdout F torn record without its newline")
	h := logsHandler(o, nil)
	for _, tc := range []struct{ query, want string }{
		{"", "one\ntwo\nerr-line\nthree\nunterminated\n"},
		{"?stream=stdout", "one\ntwo\nthree\n"},
		{"?stream=stderr", "err-line\nunterminated\n"},
		{"?tailLines=2", "three\nunterminated\n"},
		{"?stream=stdout&tailLines=2", "two\nthree\n"},
		{"?tailLines=0", ""},
		{"?limitBytes=6", "one\ntw"},
		{"?follow=true", "one\ntwo\nerr-line\nthree\nunterminated\n"},
	} {
		code, ct, body := getLogs(t, h, "/tasks/c1/logs"+tc.query)
		if code != http.StatusOK || ct != "text/plain; charset=utf-8" || body != tc.want {
			t.Errorf("%s: %d %s %q, want %q", tc.query, code, ct, body, tc.want)
		}
	}
}

// lineReader reads a streamed answer line by line.
func followLines(t *testing.T, url string) (lines <-chan string, cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s: %d %s", url, resp.StatusCode, b)
	}
	ch := make(chan string)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch, cancel
}

func nextLine(t *testing.T, lines <-chan string) (string, bool) {
	t.Helper()
	select {
	case l, ok := <-lines:
		return l, ok
	case <-time.After(10 * time.Second):
		t.Fatal("no line within 10s")
		return "", false
	}
}

func TestLogsFollowPlain(t *testing.T) {
	o := newOutputTasks(t, true, "r1")
	o.write(t, "r1", stdoutFile, "before\n")
	o.write(t, "r1", stderrFile, "")
	srv := httptest.NewServer(logsHandler(o, nil))
	defer srv.Close()
	lines, cancel := followLines(t, srv.URL+"/tasks/r1/logs?follow=true")
	defer cancel()
	if l, _ := nextLine(t, lines); l != "before" {
		t.Fatalf("got %q", l)
	}
	// Each line shows while the task runs; a line is held until it ends.
	o.appendTo(t, "r1", stderrFile, "err 1\n")
	if l, _ := nextLine(t, lines); l != "err 1" {
		t.Fatalf("got %q", l)
	}
	o.appendTo(t, "r1", stdoutFile, "out ")
	o.appendTo(t, "r1", stdoutFile, "2\nlast, unterminated")
	if l, _ := nextLine(t, lines); l != "out 2" {
		t.Fatalf("got %q", l)
	}
	close(o.ended["r1"])
	if l, _ := nextLine(t, lines); l != "last, unterminated" {
		t.Fatalf("got %q", l)
	}
	if l, ok := nextLine(t, lines); ok {
		t.Fatalf("the stream goes on after the task ended: %q", l)
	}
}

func TestLogsFollowFindsContainerLog(t *testing.T) {
	o := newOutputTasks(t, true, "c1")
	o.write(t, "c1", stdoutFile, "")
	o.write(t, "c1", stderrFile, "")
	srv := httptest.NewServer(logsHandler(o, nil))
	defer srv.Close()
	lines, cancel := followLines(t, srv.URL+"/tasks/c1/logs?follow=true&stream=stdout")
	defer cancel()
	o.appendTo(t, "c1", containerFile, crilog("stdout P hel", "stderr F not this"))
	o.appendTo(t, "c1", containerFile, crilog("stdout F lo"))
	if l, _ := nextLine(t, lines); l != "hello" {
		t.Fatalf("got %q", l)
	}
	close(o.ended["c1"])
	if l, ok := nextLine(t, lines); ok {
		t.Fatalf("the stream goes on after the task ended: %q", l)
	}
}

func TestLogsFollowLimitEnds(t *testing.T) {
	o := newOutputTasks(t, true, "r1")
	o.write(t, "r1", stdoutFile, "")
	srv := httptest.NewServer(logsHandler(o, nil))
	defer srv.Close()
	lines, cancel := followLines(t, srv.URL+"/tasks/r1/logs?follow=true&limitBytes=4")
	defer cancel()
	o.appendTo(t, "r1", stdoutFile, "abcdef\n")
	if l, _ := nextLine(t, lines); l != "abcd" {
		t.Fatalf("got %q", l)
	}
	if _, ok := nextLine(t, lines); ok {
		t.Fatal("the stream goes on past limitBytes")
	}
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
			o.write(t, "r1", stdoutFile, "x\n")
			o.write(t, "r1", stderrFile, "")
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

// TestLogsRotated: output rotated aside under the output cap (<file>.1) is
// served before the current file, for plain and CRI logs alike.
func TestLogsRotated(t *testing.T) {
	o := newOutputTasks(t, false, "p", "c")
	o.write(t, "p", stdoutFile+rotatedSuffix, "a\nb\n")
	o.write(t, "p", stdoutFile, "c\n")
	o.write(t, "p", stderrFile+rotatedSuffix, "x\n")
	o.write(t, "p", stderrFile, "y\n")
	o.write(t, "c", containerFile+rotatedSuffix, crilog("stdout F one", "stdout P tw"))
	o.write(t, "c", containerFile, crilog("stdout F o", "stderr F err"))
	h := logsHandler(o, nil)
	for _, tc := range []struct{ path, want string }{
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
		if code, _, body := getLogs(t, h, tc.path); code != http.StatusOK || body != tc.want {
			t.Errorf("%s: %d %q, want %q", tc.path, code, body, tc.want)
		}
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
	srv := httptest.NewServer(h)
	defer srv.Close()
	lines, cancel := followLines(t, srv.URL+"/tasks/quiet/logs?follow=true")
	defer cancel()
	o.appendTo(t, "quiet", stderrFile, "err 1\n")
	if l, _ := nextLine(t, lines); l != "err 1" {
		t.Fatalf("got %q", l)
	}
	o.appendTo(t, "quiet", stdoutFile, "out 1\n")
	if l, _ := nextLine(t, lines); l != "out 1" {
		t.Fatalf("got %q", l)
	}
	close(o.ended["quiet"])
	if l, ok := nextLine(t, lines); ok {
		t.Fatalf("the stream goes on after the task ended: %q", l)
	}
}
