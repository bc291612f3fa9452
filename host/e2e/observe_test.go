package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
)

// getText sends a GET and returns the status, the content type and the body.
func (h *hostProc) getText(path string) (int, string, string) {
	h.t.Helper()
	resp, err := http.Get(h.url + path)
	if err != nil {
		h.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

func TestLogsOfFinishedTask(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("out", `printf 'o1\no2\no3\n'; printf 'e1\ne2\n' >&2; printf 'no newline'`))
	h.waitTerminated("out", 10*time.Second)
	for _, tc := range []struct{ query, want string }{
		{"", "o1\no2\no3\nno newline\ne1\ne2\n"},
		{"?stream=all", "o1\no2\no3\nno newline\ne1\ne2\n"},
		{"?stream=stdout", "o1\no2\no3\nno newline\n"},
		{"?stream=stderr", "e1\ne2\n"},
		{"?tailLines=3", "no newline\ne1\ne2\n"},
		{"?stream=stdout&tailLines=2", "o3\nno newline\n"},
		{"?limitBytes=5", "o1\no2"},
		{"?stream=stderr&tailLines=1&limitBytes=100", "e2\n"},
		{"?follow=true", "o1\no2\no3\nno newline\ne1\ne2\n"},
	} {
		code, ct, body := h.getText("/tasks/out/logs" + tc.query)
		if code != 200 || ct != "text/plain; charset=utf-8" || body != tc.want {
			t.Errorf("logs%s: %d %s %q, want %q", tc.query, code, ct, body, tc.want)
		}
	}
}

func TestLogsRefusals(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", processTask("quiet", "true"))
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/tasks/no-such-task/logs", 404},
		{"/tasks/no-such-task/logs?follow=true", 404},
		{"/tasks/quiet/logs?stream=stdin", 400},
		{"/tasks/quiet/logs?follow=yes", 400},
		{"/tasks/quiet/logs?tailLines=-3", 400},
		{"/tasks/quiet/logs?limitBytes=0", 400},
	} {
		code, ct, body := h.getText(tc.path)
		var e api.Error
		if code != tc.code || ct != "application/json" || json.Unmarshal([]byte(body), &e) != nil || e.Code != tc.code {
			t.Errorf("GET %s: %d %s %s, want a JSON %d", tc.path, code, ct, body, tc.code)
		}
	}
}

// follow opens a logs?follow=true stream and delivers its lines, with the
// time each arrived; the channel closes when the stream ends.
type arrived struct {
	line string
	at   time.Time
}

func (h *hostProc) follow(ctx context.Context, path string) <-chan arrived {
	h.t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", h.url+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		h.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	ch := make(chan arrived, 100)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			ch <- arrived{sc.Text(), time.Now()}
		}
	}()
	return ch
}

func TestLogsFollowRunningTask(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("ticker", `for i in 1 2 3 4 5 6; do echo "line $i"; echo "err $i" >&2; sleep 0.2; done`))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lines := h.follow(ctx, "/tasks/ticker/logs?follow=true&stream=stdout")
	var got []arrived
	for a := range lines { // ends by itself once the task has ended
		got = append(got, a)
	}
	if ctx.Err() != nil {
		t.Fatal("the stream did not end by itself")
	}
	var text []string
	for _, a := range got {
		text = append(text, a.line)
	}
	if want := "line 1|line 2|line 3|line 4|line 5|line 6"; strings.Join(text, "|") != want {
		t.Fatalf("got %q, want %s", text, want)
	}
	// Streamed, not served at the end: the lines came as they were printed.
	if spread := got[len(got)-1].at.Sub(got[0].at); spread < 500*time.Millisecond {
		t.Fatalf("the lines came within %s of each other: not streamed", spread)
	}
	if tk, _ := h.get("ticker"); tk.Status.State.Terminated == nil {
		t.Fatalf("the stream ended before the task: %+v", tk.Status.State)
	}

	// stream=all follows both files.
	h.mustDo(201, "POST", "/tasks", shTask("both", `echo o; sleep 0.3; echo e >&2; sleep 0.3; echo o2`))
	var all []string
	for a := range h.follow(ctx, "/tasks/both/logs?follow=true") {
		all = append(all, a.line)
	}
	if strings.Join(all, "|") != "o|e|o2" {
		t.Fatalf("stream=all: got %q", all)
	}
}

// inotifyFDs counts the inotify instances pid has open.
func inotifyFDs(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), e.Name())); err == nil && l == "anon_inode:inotify" {
			n++
		}
	}
	return n
}

func TestLogsFollowCancelledReleases(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("long", `echo started; sleep 60`))
	// Running as the host sees it, which may come a moment after the
	// task's first output.
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("long")
		return tk.Status.State.Running != nil
	}, func() string { return "the task never ran" })
	pid := h.cmd.Process.Pid
	before := inotifyFDs(pid)
	ctx, cancel := context.WithCancel(context.Background())
	lines := h.follow(ctx, "/tasks/long/logs?follow=true")
	if a, ok := <-lines; !ok || a.line != "started" {
		t.Fatalf("got %q %v", a.line, ok)
	}
	if n := inotifyFDs(pid); n != before+1 {
		t.Fatalf("%d inotify instances while following, %d before", n, before)
	}
	cancel()
	for range lines {
	}
	eventually(t, 5*time.Second, func() bool { return inotifyFDs(pid) == before },
		func() string {
			return fmt.Sprintf("%d inotify instances after the client left, %d before", inotifyFDs(pid), before)
		})
	if tk, _ := h.get("long"); tk.Status.State.Running == nil {
		t.Fatalf("the task should still run: %+v", tk.Status.State)
	}
}

// scrape reads /metrics into a map from "name{labels}" (as printed) to value.
func (h *hostProc) scrape() map[string]float64 {
	h.t.Helper()
	code, ct, body := h.getText("/metrics")
	if code != 200 || !strings.HasPrefix(ct, "text/plain") {
		h.t.Fatalf("/metrics: %d %s", code, ct)
	}
	out := map[string]float64{}
	for _, l := range strings.Split(body, "\n") {
		if l == "" || l[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			h.t.Fatalf("/metrics: bad line %q", l)
		}
		out[l[:i]] = v
	}
	return out
}

func TestMetricsAfterTasks(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", processTask("ok-1", "true"))
	h.mustDo(201, "POST", "/tasks", processTask("ok-2", "true"))
	h.mustDo(201, "POST", "/tasks", shTask("fails", "exit 3"))
	h.mustDo(201, "POST", "/tasks", processTask("sleeper", "sleep", "60"))
	for _, n := range []string{"ok-1", "ok-2", "fails"} {
		h.waitTerminated(n, 10*time.Second)
	}
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("sleeper")
		return tk.Status.State.Running != nil
	}, func() string { return "sleeper never ran" })

	m := h.scrape()
	for k, want := range map[string]float64{
		`task_executor_task_starts_total`:                                            4,
		`task_executor_task_terminations_total{reason="Succeeded"}`:                  2,
		`task_executor_task_terminations_total{reason="Failed"}`:                     1,
		`task_executor_tasks{state="terminated"}`:                                    3,
		`task_executor_tasks{state="running"}`:                                       1,
		`task_executor_tasks{state="waiting"}`:                                       0,
		`task_executor_task_start_latency_seconds_count`:                             4,
		`task_executor_task_exit_visible_latency_seconds_count`:                      3,
		`task_executor_log_lines_dropped_total`:                                      0,
		`task_executor_http_requests_total{code="201",method="POST",route="/tasks"}`: 4,
	} {
		if got, ok := m[k]; !ok || got != want {
			t.Errorf("%s = %v (present: %v), want %v", k, got, ok, want)
		}
	}
	// Exits are pushed: they are visible within a second.
	if m[`task_executor_task_exit_visible_latency_seconds_bucket{le="1"}`] != 3 {
		t.Errorf("exit→visible over a second: %v", m)
	}

	// The route pattern counts, not the raw path.
	route := `task_executor_http_requests_total{code="200",method="GET",route="/tasks/:name"}`
	before := m[route]
	for i := 0; i < 3; i++ {
		h.mustDo(200, "GET", "/tasks/ok-1", nil)
	}
	h.mustDo(404, "GET", "/tasks/unknown-task", nil)
	m = h.scrape()
	if got := m[route] - before; got != 3 {
		t.Errorf("%s went up by %v, want 3", route, got)
	}
	if got := m[`task_executor_http_requests_total{code="404",method="GET",route="/tasks/:name"}`]; got != 1 {
		t.Errorf("404s on /tasks/:name: %v", got)
	}
	for k := range m {
		// (The per-task usage series are named for their tasks.)
		if strings.HasPrefix(k, "task_executor_http_") && (strings.Contains(k, "ok-1") || strings.Contains(k, "unknown-task")) {
			t.Errorf("a raw path made a series: %s", k)
		}
	}
}

func TestRuntimesAndPluginRestarts(t *testing.T) {
	h := startHost(t)
	runtimes := func() map[string]api.Runtime {
		var rts []api.Runtime
		if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
			t.Fatal(err)
		}
		out := map[string]api.Runtime{}
		for _, r := range rts {
			out[r.Name] = r
		}
		return out
	}
	rts := runtimes()
	r, ok := rts["process"]
	if !ok || !r.Healthy || r.ProtocolVersion != 1 || r.PluginPath != h.executable() || !r.Builtin ||
		len(r.Kinds) != 1 || r.Kinds[0] != "process" || r.Restarts != 0 {
		t.Errorf("runtime process: %+v (listed: %v)", r, ok)
	}
	// Without sidecar mode the nsenter plugin is not launched.
	if r, ok := rts["nsenter"]; ok {
		t.Errorf("runtime nsenter is listed without sidecar mode: %+v", r)
	}

	// A killed plugin is restarted, and that shows.
	if err := syscall.Kill(h.pluginPID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, func() bool {
		r := runtimes()["process"]
		return r.Healthy && r.Restarts == 1
	}, func() string { return fmt.Sprintf("process after its kill: %+v", runtimes()["process"]) })
	if got := h.scrape()[`task_executor_plugin_restarts_total{runtime="process"}`]; got != 1 {
		t.Errorf("plugin restarts: %v, want 1", got)
	}
}

func TestLogsFollowEndsAtShutdown(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("long", `echo started; sleep 60`))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lines := h.follow(ctx, "/tasks/long/logs?follow=true")
	if a, ok := <-lines; !ok || a.line != "started" {
		t.Fatalf("got %q %v", a.line, ok)
	}
	began := time.Now()
	h.stop()
	for range lines {
	}
	// The shutdown waits up to 10s for requests in flight: a follower
	// must not be one of them.
	if d := time.Since(began); d > 5*time.Second || ctx.Err() != nil {
		t.Fatalf("the host took %s to stop with a follower", d)
	}
}
