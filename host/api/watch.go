package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/julienschmidt/httprouter"
	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/host/tasks"
)

// WatchOptions tune GET /getTasks?watch=true.
type WatchOptions struct {
	// Bookmark is how long a stream may stay idle before a BOOKMARK event
	// (which also tells the client the resource version it is at);
	// 0 means DefaultBookmark.
	Bookmark time.Duration
	// BufferBytes bounds what a stream may hold that its client has not
	// taken yet; a stream past it is cut with an ERROR event (503);
	// 0 means DefaultWatchBuffer.
	BufferBytes int
}

// Defaults of WatchOptions.
const (
	DefaultBookmark    = 10 * time.Second
	DefaultWatchBuffer = 1 << 20
)

// WithWatch serves watches (GET /getTasks?watch=true); stop ends every
// stream (at shutdown).
func WithWatch(o WatchOptions, stop <-chan struct{}) Option {
	if o.Bookmark <= 0 {
		o.Bookmark = DefaultBookmark
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = DefaultWatchBuffer
	}
	return func(s *server) { s.watchOpts, s.watchStop = o, stop }
}

// watchEvent is one line of a watch stream, as Kubernetes' watch events
// are: a type and the object.
type watchEvent struct {
	Type   string `json:"type"`
	Object any    `json:"object"`
}

// bookmark is the object of a BOOKMARK event.
type bookmark struct {
	ResourceVersion string `json:"resourceVersion"`
}

// list answers GET /getTasks: the tasks, or with ?watch=true a stream of
// their changes.
func (s *server) list(w http.ResponseWriter, req *http.Request, _ httprouter.Params) {
	switch v := req.URL.Query().Get("watch"); v {
	case "", "false", "0":
		ts, rv := s.tasks.Snapshot()
		w.Header().Set("X-Resource-Version", strconv.FormatUint(rv, 10))
		writeList(w, ts)
	case "true", "1":
		s.watch(w, req)
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("watch %q must be true, false, 1 or 0", v))
	}
}

// watch streams the changes of the tasks as newline-delimited JSON events.
// Without a resourceVersion it begins with an ADDED event for every task
// and a BOOKMARK at the version of that snapshot; with one it resumes
// after it, or answers 410 when that history is no longer kept.
func (s *server) watch(w http.ResponseWriter, req *http.Request) {
	if s.watchStop == nil {
		writeError(w, http.StatusNotFound, "this executor does not serve watches")
		return
	}
	var from *uint64
	if v := req.URL.Query().Get("resourceVersion"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("resourceVersion %q must be a resource version the executor answered (a decimal number)", v))
			return
		}
		from = &n
	}
	wt, err := s.tasks.Watch(from)
	if errors.Is(err, tasks.ErrGone) {
		writeError(w, http.StatusGone, err.Error())
		return
	}
	if err != nil {
		s.fail(w, req, err)
		return
	}
	ctx, cancel := cancelOn(req.Context(), s.watchStop)
	defer cancel()
	st := newStream(w, s.watchOpts.BufferBytes, cancel, unsentOf(req.Context()))
	st.log, st.client = s.log, req.RemoteAddr
	holdOpen(w, 0)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.write()
	}()
	// The writer must be done with w before the handler returns, however
	// it returns.
	defer func() {
		st.close()
		<-done
	}()
	s.produce(ctx, wt, st)
}

// produce encodes the watch's events into st until ctx ends, the client
// fails, or the watch is cut.
func (s *server) produce(ctx context.Context, wt *tasks.Watch, st *stream) {
	if wt.Snapshot != nil {
		for _, t := range wt.Snapshot {
			// The snapshot is in memory already: it waits for the client
			// rather than counting against the buffer.
			if !st.put(ctx, s.lines.line(tasks.Added, t), true) {
				return
			}
		}
		wt.Snapshot = nil
		if !st.put(ctx, encodeBookmark(wt.ResourceVersion()), true) {
			return
		}
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, s.watchOpts.Bookmark)
		evs, err := wt.Next(wctx, 256)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, tasks.ErrFellBehind):
			st.put(ctx, encodeError(http.StatusServiceUnavailable, err.Error()), true)
			return
		case err != nil:
			// Idle for a whole interval: say so, and where the stream is.
			if !st.put(ctx, encodeBookmark(wt.ResourceVersion()), false) {
				return
			}
			continue
		}
		for _, ev := range evs {
			if !st.put(ctx, s.lines.line(ev.Type, ev.Task), false) {
				return
			}
		}
	}
}

// eventLines keeps the encoded lines of the latest events, shared by every
// watch: an event is encoded once, not once for each watcher that writes
// it. A task at a resource version never changes, so a version and an
// event type name one line; a slot holds the latest version that fell on it.
type eventLines struct {
	slots [eventLineSlots]atomic.Pointer[eventLine]
}

// eventLineSlots bounds what the cache holds: the events of the last
// moments, which the watches write at about the same time.
const eventLineSlots = 1024

type eventLine struct {
	rv   uint64
	typ  tasks.EventType
	line []byte // never written to once shared
}

// line returns the event's line, encoded once per version and type.
func (c *eventLines) line(typ tasks.EventType, t tasks.Task) []byte {
	if t.ResourceVersion == 0 {
		return encodeEvent(string(typ), toAPI(t))
	}
	slot := &c.slots[t.ResourceVersion%eventLineSlots]
	if l := slot.Load(); l != nil && l.rv == t.ResourceVersion && l.typ == typ {
		return l.line
	}
	line := encodeEvent(string(typ), toAPI(t))
	slot.Store(&eventLine{rv: t.ResourceVersion, typ: typ, line: line})
	return line
}

func encodeEvent(typ string, obj any) []byte {
	b, err := json.Marshal(watchEvent{Type: typ, Object: obj})
	if err != nil {
		return encodeError(http.StatusInternalServerError, "cannot encode an event: "+err.Error())
	}
	return append(b, '\n')
}

func encodeBookmark(rv uint64) []byte {
	return encodeEvent("BOOKMARK", bookmark{ResourceVersion: strconv.FormatUint(rv, 10)})
}

func encodeError(code int, msg string) []byte {
	b, _ := json.Marshal(watchEvent{Type: "ERROR", Object: Error{Code: code, Message: msg}})
	return append(b, '\n')
}

// stream is what a watch has encoded and its client not yet taken, with
// the goroutine that writes it: the encoding never waits on a slow
// client, and what a slow client costs is bounded (max).
type stream struct {
	w    http.ResponseWriter
	max  int
	fail context.CancelFunc
	// unsent is what the connection's kernel queue holds that the client
	// has not taken (0 where it cannot be known): a client that stops
	// reading fills that first, long before the stream's own buffer.
	unsent func() int
	log    hclog.Logger
	client string

	mu     sync.Mutex
	buf    []byte
	closed bool
	cut    bool
	wake   chan struct{}
	broken bool
}

func newStream(w http.ResponseWriter, max int, fail context.CancelFunc, unsent func() int) *stream {
	st := &stream{w: w, max: max, fail: fail, unsent: unsent, wake: make(chan struct{}, 1)}
	return st
}

type connKey struct{}

// ConnContext keeps a connection in the context of its requests, where a
// watch finds it to learn what its client has not taken
// (http.Server.ConnContext).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// unsentOf returns what measures the bytes the kernel holds, sent or not,
// that the client of the request's connection has not acknowledged
// (SIOCOUTQ).
func unsentOf(ctx context.Context) func() int {
	c, _ := ctx.Value(connKey{}).(net.Conn)
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return func() int { return 0 }
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return func() int { return 0 }
	}
	return func() int {
		n := 0
		_ = raw.Control(func(fd uintptr) {
			n, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		})
		return n
	}
}

// watchStall is how long a watch's client may leave its buffer full
// before the stream is cut.
const watchStall = 2 * time.Second

// held is what the client has not taken: the stream's buffer and the
// connection's queue.
func (st *stream) held() int {
	st.mu.Lock()
	n := len(st.buf)
	st.mu.Unlock()
	return n + st.unsent()
}

// put queues a line. A line that finds the buffer full waits for the
// client to take some of it; if it has not within watchStall, the stream
// is cut with an ERROR event in its place. With wait set (the snapshot,
// and the ending error) it waits as long as the client's connection
// lives. It reports whether the stream goes on.
func (st *stream) put(ctx context.Context, line []byte, wait bool) bool {
	stalled := time.Now().Add(watchStall)
	held := st.held()
	for held >= st.max && (wait || time.Now().Before(stalled)) && ctx.Err() == nil {
		st.mu.Lock()
		broken := st.broken
		st.mu.Unlock()
		if broken {
			return false
		}
		pause := time.NewTimer(5 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-pause.C:
		}
		pause.Stop()
		held = st.held()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.broken || st.cut || ctx.Err() != nil {
		return false
	}
	if held >= st.max {
		st.log.Info("cut off a watch whose client left its events unread", "unread", held, "client", st.client)
		st.cut = true
		line = encodeError(http.StatusServiceUnavailable, fmt.Sprintf("the client fell behind: it left %d bytes of events unread for %s, more than the executor holds for a watch (--watch-buffer-bytes); resume from the last resourceVersion read", held, watchStall))
	}
	st.buf = append(st.buf, line...)
	select {
	case st.wake <- struct{}{}:
	default:
	}
	return !st.cut
}

// close ends the stream once what is queued is written.
func (st *stream) close() {
	st.mu.Lock()
	st.closed = true
	st.mu.Unlock()
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// write writes what is queued, as it comes, until the stream is closed and
// written, or a write fails.
func (st *stream) write() {
	rc := http.NewResponseController(st.w)
	var out []byte
	for {
		st.mu.Lock()
		out, st.buf = st.buf, out[:0]
		closed := st.closed
		st.mu.Unlock()
		if len(out) > 0 {
			_ = rc.SetWriteDeadline(time.Now().Add(StreamWriteTimeout))
			_, err := st.w.Write(out)
			if err == nil {
				err = rc.Flush()
			}
			if err != nil {
				st.mu.Lock()
				st.broken = true
				st.mu.Unlock()
				st.fail()
				return
			}
			continue
		}
		if closed {
			return
		}
		<-st.wake
	}
}
