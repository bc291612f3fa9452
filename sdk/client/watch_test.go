package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// deadline bounds every wait of these tests; nothing waits for it unless
// the watcher misbehaves.
const deadline = 10 * time.Second

// How a scripted stream ends.
const (
	hang  = iota // open until the client goes away
	eof          // a clean end of the answer
	abort        // the connection dropped
)

// answer is what the fake host answers one watch request with.
type answer struct {
	status      int    // 0: a 200 stream of lines
	body        string // of a non-200 answer
	contentType string // of a 200 answer; the stream's by default
	lines       []string
	tail        string // written after the lines, with no newline
	// release, when set, holds the stream after its lines until it is
	// closed; then come the lines of after.
	release <-chan struct{}
	after   []string
	end     int
}

// watchHost is a fake host that answers watch requests with scripted
// answers, in order, then holds every further stream open and silent.
type watchHost struct {
	mu      sync.Mutex
	answers []answer
	seen    []url.Values
	paths   []string
	listRV  string
}

func (h *watchHost) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	h.mu.Lock()
	if req.URL.Query().Get("watch") == "" {
		rv := h.listRV
		h.mu.Unlock()
		w.Header().Set("X-Resource-Version", rv)
		_, _ = io.WriteString(w, "["+taskLine("a", "3")+"]")
		return
	}
	h.seen = append(h.seen, req.URL.Query())
	h.paths = append(h.paths, req.URL.Path)
	a := answer{}
	if len(h.answers) > 0 {
		a, h.answers = h.answers[0], h.answers[1:]
	}
	h.mu.Unlock()
	if a.status != 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.body)
		return
	}
	ct := a.contentType
	if ct == "" {
		ct = "application/x-ndjson"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	for _, l := range a.lines {
		_, _ = io.WriteString(w, l+"\n")
		w.(http.Flusher).Flush()
	}
	if a.release != nil {
		select {
		case <-a.release:
		case <-req.Context().Done():
			return
		}
		for _, l := range a.after {
			_, _ = io.WriteString(w, l+"\n")
			w.(http.Flusher).Flush()
		}
	}
	if a.tail != "" {
		_, _ = io.WriteString(w, a.tail)
		w.(http.Flusher).Flush()
	}
	switch a.end {
	case hang:
		<-req.Context().Done()
	case abort:
		panic(http.ErrAbortHandler)
	}
}

// resumedFrom lists the resourceVersion of every watch request so far.
func (h *watchHost) resumedFrom() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, len(h.seen))
	for i, q := range h.seen {
		out[i] = q.Get("resourceVersion")
	}
	return out
}

func newWatchHost(t *testing.T, answers ...answer) (*watchHost, *Client) {
	t.Helper()
	h := &watchHost{answers: answers}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL + "/prefix")
	if err != nil {
		t.Fatal(err)
	}
	return h, c
}

func taskLine(name, rv string) string {
	return fmt.Sprintf(`{"name":%q,"resourceVersion":%q,"spec":{"process":{"command":["true"]}},"status":{"state":{"running":{}}}}`, name, rv)
}

func event(typ, name, rv string) string {
	return fmt.Sprintf(`{"type":%q,"object":%s}`, typ, taskLine(name, rv))
}

func added(name, rv string) string    { return event("ADDED", name, rv) }
func modified(name, rv string) string { return event("MODIFIED", name, rv) }
func deleted(name, rv string) string  { return event("DELETED", name, rv) }
func bookmark(rv string) string {
	return fmt.Sprintf(`{"type":"BOOKMARK","object":{"resourceVersion":%q}}`, rv)
}
func errorEvent(code int) string {
	return fmt.Sprintf(`{"type":"ERROR","object":{"code":%d,"message":"scripted"}}`, code)
}

// sentinel is the last event a case expects, so that collecting up to it
// proves no other event came before it.
const sentinel = "sentinel"

func describe(e Event) string {
	if e.Type == Bookmark {
		return fmt.Sprintf("BOOKMARK @%s", e.ResourceVersion)
	}
	return fmt.Sprintf("%s %s %s @%s", e.Type, e.Task.Name, e.Task.ResourceVersion, e.ResourceVersion)
}

// collect receives events until the sentinel or the end of the watch.
func collect(t *testing.T, w *Watcher) (got []string, closed bool) {
	t.Helper()
	timeout := time.NewTimer(deadline)
	defer timeout.Stop()
	for {
		select {
		case e, ok := <-w.Events():
			if !ok {
				return got, true
			}
			got = append(got, describe(e))
			if e.Task.Name == sentinel {
				return got, false
			}
		case <-timeout.C:
			t.Fatalf("no sentinel nor end after %s; got %q", deadline, got)
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: still not so after %s", what, deadline)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func known(pairs ...string) []Task {
	var out []Task
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, Task{Name: pairs[i], ResourceVersion: pairs[i+1]})
	}
	return out
}

func TestWatch(t *testing.T) {
	cases := []struct {
		name    string
		opts    WatchOptions
		answers []answer
		want    []string
		// from is the resourceVersion of every watch request.
		from []string
		// endCode, when set, is the status of the error that ends the watch.
		endCode int
	}{
		{name: "a snapshot, then changes; a repeated bookmark is no news",
			answers: []answer{{lines: []string{added("a", "3"), added("b", "5"), bookmark("6"),
				modified("a", "7"), deleted("b", "8"), bookmark("8"), bookmark("8"), added(sentinel, "9")}}},
			want: []string{"ADDED a 3 @", "ADDED b 5 @", "BOOKMARK @6",
				"MODIFIED a 7 @7", "DELETED b 8 @8", "ADDED sentinel 9 @9"},
			from: []string{""}},
		{name: "resume from a version",
			opts:    WatchOptions{ResourceVersion: "5"},
			answers: []answer{{lines: []string{modified("a", "6"), bookmark("7"), added(sentinel, "8")}}},
			want:    []string{"MODIFIED a 6 @6", "BOOKMARK @7", "ADDED sentinel 8 @8"},
			from:    []string{"5"}},
		{name: "a connection dropped mid-event resumes from the last version",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6"), modified("b", "7")}, tail: `{"type":"MODIFIED","obj`, end: abort},
				{lines: []string{deleted("a", "8"), added(sentinel, "9")}},
			},
			want: []string{"MODIFIED a 6 @6", "MODIFIED b 7 @7", "DELETED a 8 @8", "ADDED sentinel 9 @9"},
			from: []string{"5", "7"}},
		{name: "the end of the stream resumes from the last bookmark",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6"), bookmark("9")}, end: eof},
				{lines: []string{added(sentinel, "10")}},
			},
			want: []string{"MODIFIED a 6 @6", "BOOKMARK @9", "ADDED sentinel 10 @10"},
			from: []string{"5", "9"}},
		{name: "ERROR 503 resumes from the last version; nothing after it is read",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6"), errorEvent(503), modified("a", "99")}},
				{lines: []string{modified("a", "7"), added(sentinel, "8")}},
			},
			want: []string{"MODIFIED a 6 @6", "MODIFIED a 7 @7", "ADDED sentinel 8 @8"},
			from: []string{"5", "6"}},
		{name: "a malformed event resumes from the last version",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6"), `{"type":"MODIFIED","object":{"name":"a"}}`}},
				{lines: []string{added(sentinel, "7")}},
			},
			want: []string{"MODIFIED a 6 @6", "ADDED sentinel 7 @7"},
			from: []string{"5", "6"}},
		{name: "5xx, 408 and 429 answers are retried",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6")}, end: eof},
				{status: 502, body: "<html>bad gateway</html>"},
				{status: 408, body: `{"code":408,"message":"slow"}`},
				{status: 429, body: `{"code":429,"message":"busy"}`},
				{lines: []string{added(sentinel, "7")}},
			},
			want: []string{"MODIFIED a 6 @6", "ADDED sentinel 7 @7"},
			from: []string{"5", "6", "6", "6", "6"}},
		{name: "HTTP 410 re-lists and delivers only the differences",
			opts: WatchOptions{ResourceVersion: "5", Known: known("a", "3", "b", "4", "d", "5")},
			answers: []answer{
				{status: 410, body: `{"code":410,"message":"too old"}`},
				{lines: []string{added("a", "3"), added("b", "8"), added("c", "9"), bookmark("10"),
					modified("c", "11"), added(sentinel, "12")}},
			},
			want: []string{"MODIFIED b 8 @5", "ADDED c 9 @5", "DELETED d 5 @5", "BOOKMARK @10",
				"MODIFIED c 11 @11", "ADDED sentinel 12 @12"},
			from: []string{"5", ""}},
		{name: "ERROR 410 re-lists against what was delivered",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6"), added("b", "7"), errorEvent(410)}},
				{lines: []string{added("a", "6"), added("c", "8"), bookmark("9"), added(sentinel, "10")}},
			},
			want: []string{"MODIFIED a 6 @6", "ADDED b 7 @7", "ADDED c 8 @7", "DELETED b 7 @7", "BOOKMARK @9",
				"ADDED sentinel 10 @10"},
			from: []string{"5", ""}},
		{name: "a first snapshot cut short is taken again",
			answers: []answer{
				{lines: []string{added("a", "1"), added("b", "2")}, end: abort},
				{lines: []string{added("a", "1"), added("c", "3"), bookmark("4"), added(sentinel, "5")}},
			},
			want: []string{"ADDED a 1 @", "ADDED b 2 @", "ADDED c 3 @", "DELETED b 2 @", "BOOKMARK @4",
				"ADDED sentinel 5 @5"},
			from: []string{"", ""}},
		{name: "a re-list cut short is taken again",
			opts: WatchOptions{ResourceVersion: "5", Known: known("a", "1", "b", "2")},
			answers: []answer{
				{status: 410, body: `{"code":410,"message":"restarted"}`},
				{lines: []string{added("a", "1"), added("b", "6")}, end: eof},
				{lines: []string{added("b", "6"), added("c", "7"), bookmark("8"), added(sentinel, "9")}},
			},
			want: []string{"MODIFIED b 6 @5", "ADDED c 7 @5", "DELETED a 1 @5", "BOOKMARK @8",
				"ADDED sentinel 9 @9"},
			from: []string{"5", "", ""}},
		{name: "a 400 on resuming ends the watch",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{modified("a", "6")}, end: eof},
				{status: 400, body: `{"code":400,"message":"resourceVersion must be a number"}`},
			},
			want:    []string{"MODIFIED a 6 @6"},
			from:    []string{"5", "6"},
			endCode: 400},
		{name: "a 401 on resuming ends the watch",
			opts: WatchOptions{ResourceVersion: "5"},
			answers: []answer{
				{lines: []string{}, end: abort},
				{status: 401, body: `{"code":401,"message":"the bearer token is not valid"}`},
			},
			from:    []string{"5", "5"},
			endCode: 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, cl := newWatchHost(t, c.answers...)
			var retries sync.Map
			opts := c.opts
			opts.OnRetry = func(err error) { retries.Store(err.Error(), true) }
			w, err := cl.Watch(context.Background(), opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(w.Stop)
			got, closed := collect(t, w)
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("events:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(c.want, "\n  "))
			}
			if closed != (c.endCode != 0) {
				t.Fatalf("the watch ended: %v (%v), want it to: %v", closed, w.Err(), c.endCode != 0)
			}
			if c.endCode != 0 {
				var apiErr *APIError
				if err := w.Err(); !errors.As(err, &apiErr) || apiErr.StatusCode != c.endCode ||
					!strings.Contains(err.Error(), "while watching the tasks") {
					t.Fatalf("Err() = %v, want a wrapped %d", err, c.endCode)
				}
			}
			eventually(t, "every request made", func() bool { return len(h.resumedFrom()) >= len(c.from) })
			if got := h.resumedFrom(); strings.Join(got, ",") != strings.Join(c.from, ",") {
				t.Fatalf("requests from versions %q, want %q", got, c.from)
			}
			h.mu.Lock()
			for i, q := range h.seen {
				if q.Get("watch") != "true" || h.paths[i] != "/prefix/getTasks" {
					t.Errorf("request %d: %s?%s", i, h.paths[i], q.Encode())
				}
			}
			h.mu.Unlock()
			n := 0
			retries.Range(func(any, any) bool { n++; return true })
			if n == 0 && len(c.from) > 1 {
				t.Errorf("OnRetry was not called for %d reconnections", len(c.from)-1)
			}
		})
	}
}

func TestWatchFirstRequestErrors(t *testing.T) {
	cases := []struct {
		name   string
		answer answer
		want   string
	}{
		{"a bad version", answer{status: 400, body: `{"code":400,"message":"resourceVersion must be a number"}`},
			"resourceVersion must be a number"},
		{"no token", answer{status: 401, body: `{"code":401,"message":"the bearer token is not valid"}`},
			"the bearer token is not valid"},
		{"a host without watches", answer{contentType: "application/json", lines: []string{"[]"}, end: eof},
			"does not support watches"},
		{"a proxy's error", answer{status: 502, body: "bad gateway"}, "502"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, cl := newWatchHost(t, c.answer)
			w, err := cl.Watch(context.Background(), WatchOptions{ResourceVersion: "x"})
			if err == nil {
				w.Stop()
				t.Fatal("Watch succeeded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "while starting to watch the tasks") {
				t.Fatalf("error %q, want it to say %q", err, c.want)
			}
		})
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	cl, err := New(base)
	if err != nil {
		t.Fatal(err)
	}
	var urlErr *url.Error
	if _, err := cl.Watch(context.Background(), WatchOptions{}); !errors.As(err, &urlErr) {
		t.Fatalf("a host that is down gave %v, want the transport's error", err)
	}
}

func TestWatchDecodesBothFormats(t *testing.T) {
	compat := `{"type":"ADDED","object":{"name":"` + sentinel + `","resourceVersion":"4","process":{"command":["true"]},` +
		`"processStatus":{"running":{}},"status":{"state":{"running":{}}}}}`
	_, cl := newWatchHost(t, answer{lines: []string{added("a", "3"), compat}})
	w, err := cl.Watch(context.Background(), WatchOptions{ResourceVersion: "2"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	for _, name := range []string{"a", sentinel} {
		e := <-w.Events()
		if e.Task.Name != name || e.Task.Spec.Process == nil || e.Task.Process == nil || e.Task.ProcessStatus == nil ||
			e.Task.Status.State.Running == nil {
			t.Fatalf("decoded %+v", e)
		}
	}
}

func TestWatchIdleTimeout(t *testing.T) {
	h, cl := newWatchHost(t,
		answer{lines: []string{modified("a", "6")}},
		answer{lines: []string{added(sentinel, "7")}})
	retried := make(chan error, 10)
	w, err := cl.Watch(context.Background(), WatchOptions{ResourceVersion: "5", IdleTimeout: 100 * time.Millisecond,
		OnRetry: func(err error) {
			select {
			case retried <- err:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	got, _ := collect(t, w)
	if strings.Join(got, ",") != "MODIFIED a 6 @6,ADDED sentinel 7 @7" {
		t.Fatalf("events %q", got)
	}
	// The last stream goes silent too, and is reopened in turn.
	if from := h.resumedFrom(); len(from) < 2 || strings.Join(from[:2], ",") != "5,6" {
		t.Fatalf("requests from versions %q", from)
	}
	if err := <-retried; !strings.Contains(err.Error(), "no event in 100ms") {
		t.Fatalf("retried for %v, want the silence", err)
	}
}

// TestWatchSlowCaller: the idle clock does not run while an event waits
// for the caller, or a slow caller would cut healthy streams.
func TestWatchSlowCaller(t *testing.T) {
	release := make(chan struct{})
	h, cl := newWatchHost(t, answer{lines: []string{modified("a", "6")}, release: release, after: []string{added(sentinel, "7")}})
	w, err := cl.Watch(context.Background(), WatchOptions{ResourceVersion: "5", IdleTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	// The caller is busy elsewhere for longer than the idle timeout.
	time.Sleep(time.Second)
	if e := <-w.Events(); describe(e) != "MODIFIED a 6 @6" {
		t.Fatalf("first event %s", describe(e))
	}
	close(release)
	if got, _ := collect(t, w); strings.Join(got, ",") != "ADDED sentinel 7 @7" {
		t.Fatalf("events %q, want the sentinel from the first stream", got)
	}
	if from := h.resumedFrom(); from[0] != "5" || len(from) > 1 && from[1] != "7" {
		t.Fatalf("reconnected while the caller was busy: requests from %q", from)
	}
}

// watchGoroutines counts the goroutines running the watcher's code.
func watchGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "client.(*watchState)") || strings.Contains(g, "client.(*Client).Watch") {
			n++
		}
	}
	return n
}

func TestWatchEnds(t *testing.T) {
	cases := []struct {
		name    string
		answers []answer
		// read: receive the first event before ending the watch.
		read bool
		stop bool // Stop rather than cancel the context
		// cancelOnRetry cancels as the watcher is about to back off.
		cancelOnRetry bool
	}{
		{name: "cancel while the stream is silent", answers: []answer{{lines: []string{modified("a", "6")}}}, read: true},
		{name: "cancel while an event waits for the caller", answers: []answer{{lines: []string{modified("a", "6")}}}},
		{name: "cancel during a backoff", answers: []answer{{lines: []string{modified("a", "6")}, end: eof},
			{status: 503, body: `{"code":503,"message":"down"}`}}, read: true, cancelOnRetry: true},
		{name: "stop while the stream is silent", answers: []answer{{lines: []string{modified("a", "6")}}}, read: true, stop: true},
		{name: "stop while an event waits for the caller", answers: []answer{{lines: []string{modified("a", "6")}}}, stop: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, cl := newWatchHost(t, c.answers...)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			opts := WatchOptions{ResourceVersion: "5"}
			if c.cancelOnRetry {
				opts.OnRetry = func(err error) {
					if strings.Contains(err.Error(), "down") {
						cancel()
					}
				}
			}
			w, err := cl.Watch(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if c.read {
				<-w.Events()
			}
			eventually(t, "the watcher at work", func() bool { return len(h.resumedFrom()) == len(c.answers) })
			if c.stop {
				stopped := make(chan struct{})
				go func() {
					w.Stop()
					w.Stop()
					close(stopped)
				}()
				select {
				case <-stopped:
				case <-time.After(deadline):
					t.Fatal("Stop did not return")
				}
			} else {
				cancel()
			}
			timeout := time.After(deadline)
			for open := true; open; {
				select {
				case _, open = <-w.Events():
				case <-timeout:
					t.Fatal("the events channel is still open")
				}
			}
			if err := w.Err(); c.stop && err != nil || !c.stop && !errors.Is(err, context.Canceled) {
				t.Fatalf("Err() = %v", err)
			}
			eventually(t, "no watcher goroutine left", func() bool { return watchGoroutines() == 0 })
		})
	}
}

func TestListWithVersion(t *testing.T) {
	h, cl := newWatchHost(t)
	h.mu.Lock()
	h.listRV = "42"
	h.mu.Unlock()
	tasks, rv, err := cl.ListWithVersion(context.Background())
	if err != nil || rv != "42" || len(tasks) != 1 || tasks[0].ResourceVersion != "3" {
		t.Fatalf("ListWithVersion: %v, %q, %v", tasks, rv, err)
	}
	h.mu.Lock()
	h.listRV = ""
	h.mu.Unlock()
	if _, rv, err := cl.ListWithVersion(context.Background()); err != nil || rv != "" {
		t.Fatalf("a host without versions: %q, %v", rv, err)
	}
}
