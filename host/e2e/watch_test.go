package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk/client"
)

// wevent is one event of a watch stream, as read.
type wevent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
	// Decoded from Object.
	task client.Task
	rv   uint64
	code int
}

// watcher reads one watch stream into memory.
type watcher struct {
	h    *hostProc
	resp *http.Response
	// resumed counts the times the host cut the stream (ERROR 503, the
	// reader fell behind) and the watcher resumed from the last version it
	// read, as a client does.
	resumed int

	mu     sync.Mutex
	events []wevent
	// snapshot counts the events of the initial snapshot (up to and with
	// its BOOKMARK); -1 until it is complete.
	snapshot int
	ended    error
	done     chan struct{}
}

// watch opens GET /getTasks?watch=true (from rv, unless "") and reads it
// into memory as it comes.
func (h *hostProc) watch(rv string) *watcher {
	h.t.Helper()
	url := h.url + "/getTasks?watch=true"
	if rv != "" {
		url += "&resourceVersion=" + rv
	}
	resp, err := http.Get(url)
	if err != nil {
		h.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		h.t.Fatalf("watch from %q: %d %s", rv, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		h.t.Fatalf("watch answered Content-Type %q", ct)
	}
	w := &watcher{h: h, resp: resp, snapshot: -1, done: make(chan struct{})}
	if rv != "" {
		w.snapshot = 0
	}
	h.t.Cleanup(func() { resp.Body.Close() })
	go w.read()
	return w
}

func (w *watcher) read() {
	defer close(w.done)
	body := w.resp.Body
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if bytes.HasPrefix(sc.Bytes(), []byte(`{"type":"ERROR","object":{"code":503`)) {
			// Cut for reading too slowly (the race detector on a busy
			// machine): resume from the last version read.
			body.Close()
			resp, err := http.Get(fmt.Sprintf("%s/getTasks?watch=true&resourceVersion=%d", w.h.url, w.at()))
			if err != nil || resp.StatusCode != http.StatusOK {
				w.finish(fmt.Errorf("resuming after a cut: %v %v", err, resp))
				return
			}
			w.mu.Lock()
			w.resumed++
			w.mu.Unlock()
			body = resp.Body
			w.h.t.Cleanup(func() { resp.Body.Close() })
			sc = bufio.NewScanner(body)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			continue
		}
		var ev wevent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			w.finish(fmt.Errorf("a malformed line %q: %v", sc.Text(), err))
			return
		}
		switch ev.Type {
		case "ERROR":
			var e struct{ Code int }
			_ = json.Unmarshal(ev.Object, &e)
			ev.code = e.Code
		case "BOOKMARK":
			var b struct{ ResourceVersion string }
			_ = json.Unmarshal(ev.Object, &b)
			ev.rv, _ = strconv.ParseUint(b.ResourceVersion, 10, 64)
		default:
			if err := json.Unmarshal(ev.Object, &ev.task); err != nil {
				w.finish(fmt.Errorf("an event's task %s: %v", ev.Object, err))
				return
			}
			ev.rv, _ = strconv.ParseUint(ev.task.ResourceVersion, 10, 64)
		}
		w.mu.Lock()
		w.events = append(w.events, ev)
		if w.snapshot < 0 && ev.Type == "BOOKMARK" {
			w.snapshot = len(w.events)
		}
		w.mu.Unlock()
	}
	w.finish(sc.Err())
}

func (w *watcher) finish(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		err = io.EOF
	}
	w.ended = err
}

// changes returns the events after the snapshot (bookmarks left out) and
// the snapshot's tasks.
func (w *watcher) changes() (snap []wevent, evs []wevent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, ev := range w.events {
		switch {
		case i < w.snapshot && ev.Type == "ADDED":
			snap = append(snap, ev)
		case i < w.snapshot || ev.Type == "BOOKMARK":
		default:
			evs = append(evs, ev)
		}
	}
	return snap, evs
}

// at returns the resource version the watcher has read up to.
func (w *watcher) at() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	var rv uint64
	for i, ev := range w.events {
		if i >= w.snapshot || ev.Type == "BOOKMARK" {
			rv = max(rv, ev.rv)
		}
	}
	return rv
}

// summary is what a watcher must agree on for one event: its type, its
// version and the task's state.
func summary(ev wevent) string {
	s := ev.task.Status.State
	state := "waiting"
	switch {
	case s.Terminated != nil:
		state = fmt.Sprintf("terminated(%d)", s.Terminated.ExitCode)
	case s.Running != nil:
		state = "running"
	}
	if ev.task.DeletionTimestamp != nil {
		state += ",deleting"
	}
	return fmt.Sprintf("%s@%d:%s", ev.Type, ev.rv, state)
}

// stateRank orders what an event can say of a task in its life.
func stateRank(ev wevent) int {
	s := ev.task.Status.State
	r := 0
	switch {
	case s.Terminated != nil:
		r = 2
	case s.Running != nil:
		r = 1
	}
	if ev.task.DeletionTimestamp != nil {
		r += 3
	}
	if ev.Type == "DELETED" {
		r = 10
	}
	return r
}

// smallWindow dials with a receive buffer of a few KiB, so that a client
// that does not read fills up at once.
func smallWindow(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		if err != nil {
			return err
		}
		return serr
	}}
	return d.DialContext(ctx, network, addr)
}

// TestWatchSeesEveryChange drives 1,000 tasks through create, run, exit and
// delete, the way the controller does (setTasks with the whole list), while
// ten watchers observe: five from the start, two resuming from older
// resource versions, one with a snapshot taken half-way, one resuming late
// from early on, and one that never reads. Every reading watcher must see,
// per task, the same sequence of states the reference watcher saw, in an
// order a task can go through, with strictly increasing resource versions;
// the one that never reads is cut off with an ERROR event (503), and the
// host's memory does not grow with what it did not read.
func TestWatchSeesEveryChange(t *testing.T) {
	const n = 1000
	// Room for a reader slowed down by the race detector on a busy machine;
	// the one that never reads leaves more than that.
	// (The kernel queues about 512 KiB for a connection whose client does
	// not read, which counts too: the buffer must be below that for the
	// one that never reads to be cut for sure.)
	h := startHost(t, "--watch-buffer-bytes", "256Ki", "--watch-history", "100000", "--log-level", "info")
	var from []*watcher
	for i := 0; i < 5; i++ {
		from = append(from, h.watch(""))
	}
	silent := silentWatch(t, h)
	ref := from[0]

	var desired []map[string]any
	sync := func() {
		t.Helper()
		h.mustDo(200, "POST", "/setTasks", desired)
	}
	var late []*watcher
	resumedFrom := map[*watcher]uint64{}
	for batch := 0; batch < 4; batch++ {
		for i := batch * n / 4; i < (batch+1)*n/4; i++ {
			cmd := "true"
			if i%2 == 1 {
				cmd = "false"
			}
			desired = append(desired, processTask(fmt.Sprintf("task-%04d", i), cmd))
		}
		sync()
		if batch == 1 {
			// Half-way: resume from the reference's past and present, and
			// take a snapshot.
			_, evs := ref.changes()
			old := evs[len(evs)/3].rv
			now := ref.at()
			for _, rv := range []uint64{old, now} {
				w := h.watch(strconv.FormatUint(rv, 10))
				resumedFrom[w] = rv
				late = append(late, w)
			}
			late = append(late, h.watch(""))
		}
	}
	terminated := func() int {
		_, evs := ref.changes()
		seen := map[string]bool{}
		for _, ev := range evs {
			if ev.task.Status.State.Terminated != nil {
				seen[ev.task.Name] = true
			}
		}
		return len(seen)
	}
	eventually(t, 3*time.Minute, func() bool { return terminated() == n }, func() string {
		k := terminated()
		ref.mu.Lock()
		defer ref.mu.Unlock()
		return fmt.Sprintf("the reference watcher saw %d of %d tasks terminate (%d events read, ended: %v)", k, n, len(ref.events), ref.ended)
	})
	_, evs := ref.changes()
	early := h.watch(strconv.FormatUint(evs[10].rv, 10))
	resumedFrom[early] = evs[10].rv
	late = append(late, early)

	desired = []map[string]any{}
	sync()
	deleted := func() int {
		_, evs := ref.changes()
		k := 0
		for _, ev := range evs {
			if ev.Type == "DELETED" {
				k++
			}
		}
		return k
	}
	eventually(t, 3*time.Minute, func() bool { return deleted() == n }, func() string {
		return fmt.Sprintf("the reference watcher saw %d of %d tasks deleted", deleted(), n)
	})
	final := ref.at()
	readers := append(append([]*watcher{}, from...), late...)
	for i, w := range readers {
		eventually(t, time.Minute, func() bool { return w.at() >= final }, func() string {
			return fmt.Sprintf("watcher %d is at %d, the reference at %d", i, w.at(), final)
		})
	}

	// The reference: per task, an order a task goes through, every change
	// once, strictly increasing versions.
	_, refEvs := ref.changes()
	perTask := map[string][]string{}
	var last uint64
	lastRank := map[string]int{}
	for _, ev := range refEvs {
		if ev.rv <= last {
			t.Fatalf("the reference watcher read version %d after %d", ev.rv, last)
		}
		last = ev.rv
		name := ev.task.Name
		if r := stateRank(ev); len(perTask[name]) > 0 && r < lastRank[name] {
			t.Fatalf("task %s went back: %v then %s", name, perTask[name], summary(ev))
		} else {
			lastRank[name] = r
		}
		perTask[name] = append(perTask[name], summary(ev))
	}
	if len(perTask) != n {
		t.Fatalf("the reference watcher saw %d tasks, want %d", len(perTask), n)
	}
	for name, seq := range perTask {
		if !strings.HasPrefix(seq[0], "ADDED@") || !strings.HasPrefix(seq[len(seq)-1], "DELETED@") {
			t.Fatalf("task %s: %v, want ADDED first and DELETED last", name, seq)
		}
		var terminated, deleting int
		for _, s := range seq {
			if strings.Contains(s, "terminated") && !strings.Contains(s, "deleting") && !strings.HasPrefix(s, "DELETED") {
				terminated++
			}
			if strings.Contains(s, "deleting") && strings.HasPrefix(s, "MODIFIED") {
				deleting++
			}
		}
		if terminated != 1 || deleting != 1 {
			t.Fatalf("task %s: %v, want one change to terminated and one to deleting", name, seq)
		}
	}
	want := func(after uint64) []string {
		var out []string
		for _, ev := range refEvs {
			if ev.rv > after {
				out = append(out, ev.task.Name+" "+summary(ev))
			}
		}
		return out
	}
	for i, w := range readers {
		snap, evs := w.changes()
		var after uint64
		if rv, ok := resumedFrom[w]; ok {
			after = rv
		} else if len(snap) > 0 {
			// A snapshot shows each task as the reference saw it last
			// before the snapshot's version.
			w.mu.Lock()
			after = w.events[w.snapshot-1].rv
			w.mu.Unlock()
			lastBefore := map[string]string{}
			for _, ev := range refEvs {
				if ev.rv <= after {
					lastBefore[ev.task.Name] = summary(ev)
				}
			}
			for _, ev := range snap {
				got := summary(ev)
				if w := lastBefore[ev.task.Name]; strings.SplitN(got, ":", 2)[1] != strings.SplitN(w, ":", 2)[1] || ev.rv != parseRV(w) {
					t.Fatalf("watcher %d's snapshot shows %s as %s, the reference saw it as %s", i, ev.task.Name, got, w)
				}
			}
		}
		var got []string
		var prev uint64
		for _, ev := range evs {
			if ev.rv <= prev {
				t.Fatalf("watcher %d read version %d after %d", i, ev.rv, prev)
			}
			prev = ev.rv
			got = append(got, ev.task.Name+" "+summary(ev))
		}
		if exp := want(after); strings.Join(got, "\n") != strings.Join(exp, "\n") {
			t.Fatalf("watcher %d (after %d) read %d changes, the reference %d after it; first difference: %s", i, after, len(got), len(exp), firstDiff(got, exp))
		}
	}
	resumed := 0
	for _, w := range readers {
		w.mu.Lock()
		resumed += w.resumed
		w.mu.Unlock()
	}
	t.Logf("%d changes of %d tasks, %d reading watchers agree (after %d resumes of streams cut for reading slowly)", len(refEvs), n, len(readers), resumed)

	// The watcher that never read: cut off, its stream ending with an
	// ERROR event once read, and the host holding nothing of it.
	rss := hostRSS(t, h)
	_ = silent.SetReadDeadline(time.Now().Add(30 * time.Second))
	raw, err := io.ReadAll(silent)
	if err != nil && !strings.Contains(string(raw), "\r\n0\r\n\r\n") {
		t.Fatalf("reading the stream of the watcher that never read: %v (read %d bytes, ending %q)", err, len(raw), tail(raw))
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var lastEv wevent
	for _, l := range lines {
		if strings.HasPrefix(l, "{") {
			lastEv = wevent{}
			_ = json.Unmarshal([]byte(l), &lastEv)
		}
	}
	var e struct{ Code int }
	_ = json.Unmarshal(lastEv.Object, &e)
	if lastEv.Type != "ERROR" || e.Code != http.StatusServiceUnavailable || !strings.HasSuffix(string(raw), "\r\n0\r\n\r\n") {
		t.Fatalf("the stream of the watcher that never read ended %q, want an ERROR 503 event and the stream's end", tail(raw))
	}
	// What the host held for it is bounded: the stream stopped once the
	// buffer and the kernel's queue held more than --watch-buffer-bytes
	// (plus what the kernel took on before the check, the client's own
	// receive buffer and the HTTP framing). The run's events are several
	// times more.
	if len(raw) > 1<<20 {
		t.Fatalf("the watcher that never read got %d bytes before it was cut, more than the 1 MiB bound", len(raw))
	}
	t.Logf("the watcher that never read was cut after %d bytes; host RSS %d KiB", len(raw), rss/1024)
}

func tail(b []byte) string {
	return string(b[max(0, len(b)-300):])
}

// silentWatch opens a watch on a connection with a receive buffer of a few
// KiB and never reads it (until the caller does, raw: HTTP/1.1 chunks). The
// host closes it once its answer is over.
func silentWatch(t *testing.T, h *hostProc) net.Conn {
	c, err := smallWindow(context.Background(), "tcp", strings.TrimPrefix(h.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, "GET /getTasks?watch=true HTTP/1.1\r\nHost: executor\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

func parseRV(summary string) uint64 {
	at := strings.SplitN(strings.SplitN(summary, "@", 2)[1], ":", 2)[0]
	rv, _ := strconv.ParseUint(at, 10, 64)
	return rv
}

func firstDiff(a, b []string) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return fmt.Sprintf("at %d: read %q, reference %q", i, a[i], b[i])
		}
	}
	return fmt.Sprintf("one is a prefix of the other (%d vs %d)", len(a), len(b))
}

// hostRSS is the host process's resident memory, in bytes.
func hostRSS(t *testing.T, h *hostProc) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.Atoi(f[1])
			return kb * 1024
		}
	}
	return 0
}

// TestWatchAcrossKill9: after the host is killed with SIGKILL and started
// again, a watch resumed from the last resource version seen answers 410
// (the history went with the process), never a version seen before; every
// version the new process hands out is above every one the old one did;
// and the Go client's Watch, running through it all, re-lists and goes on
// delivering each change once.
func TestWatchAcrossKill9(t *testing.T) {
	// The same address after the restart, for the client to reconnect to.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := startHost(t, "--log-level", "info", "--listen-addr", addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var retries []string
	var rmu sync.Mutex
	cw, err := h.client().Watch(ctx, client.WatchOptions{OnRetry: func(err error) {
		rmu.Lock()
		retries = append(retries, err.Error())
		rmu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		typ  client.EventType
		name string
		rv   uint64
		term bool
	}
	got := make(chan seen, 1000)
	go func() {
		for ev := range cw.Events() {
			if ev.Type == client.Bookmark {
				continue
			}
			rv, _ := strconv.ParseUint(ev.Task.ResourceVersion, 10, 64)
			got <- seen{ev.Type, ev.Task.Name, rv, ev.Task.Terminated()}
		}
		close(got)
	}()
	await := func(what string, cond func(seen) bool) seen {
		t.Helper()
		timeout := time.After(time.Minute)
		for {
			select {
			case s, ok := <-got:
				if !ok {
					t.Fatalf("the client's watch ended while waiting for %s: %v", what, cw.Err())
				}
				if cond(s) {
					return s
				}
			case <-timeout:
				t.Fatalf("the client's watch did not deliver %s", what)
			}
		}
	}

	h.mustDo(201, "POST", "/tasks", processTask("before", "true"))
	h.mustDo(201, "POST", "/tasks", processTask("survivor", "sleep", "600"))
	ended := await("the first task's end", func(s seen) bool { return s.name == "before" && s.term })
	running := h.watch("")
	eventually(t, 30*time.Second, func() bool { return running.at() >= ended.rv }, func() string { return "the raw watch did not catch up" })
	last := h.list()
	var highest uint64
	for _, tk := range last {
		rv, _ := strconv.ParseUint(tk.ResourceVersion, 10, 64)
		highest = max(highest, rv)
	}
	highest = max(highest, running.at())

	h.kill9()
	h.restart()

	code, body := h.do("GET", fmt.Sprintf("/getTasks?watch=true&resourceVersion=%d", highest), nil)
	if code != http.StatusGone {
		t.Fatalf("a watch resumed after the restart from %d answered %d %s, want 410", highest, code, body)
	}
	var e struct {
		Code    int
		Message string
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Code != http.StatusGone || e.Message == "" {
		t.Fatalf("the 410 is not the JSON error body: %s", body)
	}
	for _, tk := range h.list() {
		if rv, _ := strconv.ParseUint(tk.ResourceVersion, 10, 64); rv <= highest {
			t.Fatalf("after the restart task %s has version %d, at or below %d, the highest before", tk.Name, rv, highest)
		}
	}
	fresh := h.watch("")
	h.mustDo(201, "POST", "/tasks", processTask("after", "true"))
	after := await("the new task's end, through the re-listed watch", func(s seen) bool { return s.name == "after" && s.term })
	if after.rv <= highest {
		t.Fatalf("the new task's change has version %d, at or below %d, the highest before the restart", after.rv, highest)
	}
	eventually(t, 30*time.Second, func() bool { return fresh.at() >= after.rv }, func() string { return "the new raw watch did not see the new task end" })
	_, evs := fresh.changes()
	for _, ev := range evs {
		if ev.rv <= highest {
			t.Fatalf("the new watch read version %d, at or below %d, the highest before the restart", ev.rv, highest)
		}
	}
	rmu.Lock()
	defer rmu.Unlock()
	relisted := false
	for _, r := range retries {
		relisted = relisted || strings.Contains(r, "410") || strings.Contains(strings.ToLower(r), "gone")
	}
	if !relisted {
		t.Fatalf("the client's watch did not re-list after the restart; its retries: %q", retries)
	}
}
