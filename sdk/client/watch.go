package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime"
	"net/http"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// EventType says what an Event reports.
type EventType string

const (
	// Added reports a task that was created or, in a snapshot, one the
	// caller has not been told of.
	Added EventType = "ADDED"
	// Modified reports a task that changed.
	Modified EventType = "MODIFIED"
	// Deleted reports a task that is gone; Event.Task is its last view.
	Deleted EventType = "DELETED"
	// Bookmark reports that the caller has been told every change up to
	// Event.ResourceVersion; Event.Task is zero. One ends every snapshot
	// (the first one of a watch started without a version, and every
	// re-list), so a caller knows when its view of the tasks is whole.
	Bookmark EventType = "BOOKMARK"
)

// Event is one change of the host's tasks, as a Watcher delivers it.
type Event struct {
	// Type says what the event reports.
	Type EventType
	// Task is the task after the change; for Deleted, the last view of it;
	// zero for a Bookmark.
	Task Task
	// ResourceVersion is where the caller stands once it has handled this
	// event: a watch started from it (WatchOptions.ResourceVersion)
	// delivers what follows. For a change the host streamed it is the
	// task's own version. A snapshot is consistent only once whole, so
	// the events that a snapshot yields keep the version from before it
	// (empty for the first snapshot of a watch started without one), and
	// the Bookmark that ends it carries the new one: a caller that stores
	// versions as it goes never stores one past what it was told.
	ResourceVersion string
}

// WatchOptions configure Watch. The zero value starts with a snapshot of
// every task.
type WatchOptions struct {
	// ResourceVersion is where to start. Empty starts with a snapshot:
	// every task as an Added event, then a Bookmark. A version from
	// ListWithVersion or from an Event resumes right after it.
	ResourceVersion string
	// Known is what the caller already knows as of ResourceVersion, such
	// as ListWithVersion's tasks. When the host no longer keeps the
	// history after ResourceVersion (it restarted, or the version is too
	// old), the watcher re-lists and delivers only the differences from
	// Known; without Known, every task comes as Added and a task deleted
	// meanwhile goes unreported.
	Known []Task
	// IdleTimeout is how long a stream may stay silent before it is taken
	// for dead and reopened: a connection can die without either end
	// noticing, and the host sends an idle stream a Bookmark every 10 s by
	// default. Zero means one minute; a negative value, never.
	IdleTimeout time.Duration
	// OnRetry, when set, is called with the reason each time the watcher
	// reopens its stream or re-lists, so that a caller can log what would
	// otherwise be silent. It runs on the watcher's goroutine: it must
	// not block.
	OnRetry func(err error)
}

// Watcher delivers the changes of the host's tasks as a gapless stream of
// events, reconnecting as needed, until its context is done, Stop is
// called, or the host refuses the watch.
type Watcher struct {
	events chan Event
	cancel context.CancelFunc
	done   chan struct{}

	mu  sync.Mutex
	err error
}

// Events returns the channel of events; it is closed when the watch ends,
// and Err then says why. The watcher reads the stream only as fast as the
// caller receives: a caller far behind is cut off by the host, and the
// watcher then resumes where it was.
func (w *Watcher) Events() <-chan Event { return w.events }

// Stop ends the watch and returns once the events channel is closed and
// the watcher's connection released. It may be called more than once.
func (w *Watcher) Stop() {
	w.cancel()
	<-w.done
}

// Err returns why the watch ended, once Events is closed: nil after Stop;
// the context's error when it was canceled or expired; or the error that
// cannot be retried: an *APIError with the host's 4xx answer (400 for a
// malformed version, 401 for a missing token, ...), or a host that does
// not stream watches. It returns nil while the watch runs.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Watch watches the host's tasks from opts.ResourceVersion, until ctx is
// done or Stop is called. Watch opens the first stream itself and returns
// its error, if any (except a 410, which is a re-list), so that a wrong
// address, token or version shows at once.
//
// From then on, the watcher keeps the stream open: when it drops, ends,
// goes silent for opts.IdleTimeout, or the host cuts it off (for instance
// because the caller read too slowly), it reopens it from the last version
// it delivered, after a jittered exponential backoff (100 ms up to 5 s,
// back to the start once a stream delivers again). When the host no longer
// keeps that history (410), it re-lists and delivers only the
// differences from what the caller has been told (Added for a new name,
// Modified for a changed version, Deleted for a name gone), then a
// Bookmark. A 4xx answer other than 410, 408 and 429 ends the watch.
//
// The watcher keeps the last view of every task, to compute those
// differences and report a task's deletion; beyond that its memory is
// bounded.
func (c *Client) Watch(ctx context.Context, opts WatchOptions) (*Watcher, error) {
	s := &watchState{
		c:     c,
		opts:  opts,
		rv:    opts.ResourceVersion,
		known: make(map[string]Task, len(opts.Known)),
	}
	if s.opts.IdleTimeout == 0 {
		s.opts.IdleTimeout = defaultIdleTimeout
	}
	for _, t := range opts.Known {
		if t.Name != "" {
			s.known[t.Name] = t
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	first, err := s.open(wctx)
	if err != nil && !isGone(err) {
		cancel()
		return nil, fmt.Errorf("while starting to watch the tasks: %w", err)
	}
	w := &Watcher{events: make(chan Event), cancel: cancel, done: make(chan struct{})}
	s.events = w.events
	go func() {
		runErr := s.run(wctx, first, err)
		if wctx.Err() != nil {
			// Only the caller's context or Stop cancels wctx, and Stop is
			// no failure.
			runErr = ctx.Err()
		}
		if runErr != nil && !errors.Is(runErr, context.Canceled) && !errors.Is(runErr, context.DeadlineExceeded) {
			runErr = fmt.Errorf("while watching the tasks: %w", runErr)
		}
		w.mu.Lock()
		w.err = runErr
		w.mu.Unlock()
		close(w.events)
		close(w.done)
	}()
	return w, nil
}

const (
	defaultIdleTimeout = time.Minute
	backoffMin         = 100 * time.Millisecond
	backoffMax         = 5 * time.Second
	// maxEventBytes bounds one line of the stream: a task is at most what
	// the host accepts in a request (1 MiB) plus its status.
	maxEventBytes = 4 << 20
)

var (
	errStreamEnded = errors.New("the host ended the watch stream")
	errTruncated   = errors.New("the watch stream ended in the middle of an event")
)

// notAStreamError is a 2xx answer that is not a watch stream: a host that
// predates watches answers the plain list, so trying again cannot help.
type notAStreamError struct{ contentType string }

// Error says what the host answered instead.
func (e *notAStreamError) Error() string {
	return fmt.Sprintf("the host answered a watch with %q, not an application/x-ndjson stream: it does not support watches", e.contentType)
}

// watchState is the watcher's goroutine's own.
type watchState struct {
	c      *Client
	opts   WatchOptions
	events chan<- Event
	// rv is where the caller stands: the version of the last event sent
	// that was a consistent point ("" before the first snapshot ends).
	rv string
	// relist makes the next stream a snapshot even though rv is set: the
	// host no longer has the history after rv.
	relist bool
	// known is every task as the caller was last told of it.
	known map[string]Task
}

// stream is one open watch answer.
type stream struct {
	body   io.ReadCloser
	cancel context.CancelFunc
	// snapshot: the stream was opened without a version, so it starts
	// with every task and a Bookmark.
	snapshot bool
	idle     time.Duration
	timer    *time.Timer
	idled    atomic.Bool
}

// touch records that the stream is alive.
func (st *stream) touch() {
	if st.timer != nil {
		st.timer.Reset(st.idle)
	}
}

func (st *stream) pause() {
	if st.timer != nil {
		st.timer.Stop()
	}
}

func (st *stream) close() {
	if st.timer != nil {
		st.timer.Stop()
	}
	_ = st.body.Close()
	st.cancel()
}

// open starts a watch request from where the caller stands.
func (s *watchState) open(ctx context.Context) (*stream, error) {
	q := url.Values{"watch": {"true"}}
	from := s.rv
	if s.relist {
		from = ""
	}
	if from != "" {
		q.Set("resourceVersion", from)
	}
	cctx, cancel := context.WithCancel(ctx)
	st := &stream{cancel: cancel, snapshot: from == "", idle: s.opts.IdleTimeout}
	if st.idle > 0 {
		// The timer also covers waiting for the answer's headers: a host
		// that accepted the connection and hangs is as dead as a silent
		// stream.
		st.timer = time.AfterFunc(st.idle, func() {
			st.idled.Store(true)
			cancel()
		})
	}
	resp, err := s.c.do(cctx, http.MethodGet, "/getTasks", q, nil)
	if err != nil {
		if st.timer != nil {
			st.timer.Stop()
		}
		cancel()
		if st.idled.Load() {
			return nil, fmt.Errorf("no answer in %s: %w", st.idle, err)
		}
		return nil, err
	}
	st.body = resp.Body
	ct := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/x-ndjson" {
		st.close()
		return nil, &notAStreamError{contentType: ct}
	}
	return st, nil
}

// run keeps a stream open until ctx is done or an error cannot be retried.
// st is the first stream, or nil with err why it could not be opened.
func (s *watchState) run(ctx context.Context, st *stream, err error) error {
	var bo backoff
	for {
		if st != nil {
			var delivered bool
			delivered, err = s.consume(ctx, st)
			st.close()
			if delivered {
				bo.reset()
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := true
		switch {
		case isTerminal(err):
			return err
		case isGone(err):
			// A stale version is re-listed at once; a snapshot refused
			// as gone is the host's trouble, and waits like any other.
			wait = s.relist || s.rv == ""
			s.relist = true
		}
		if s.opts.OnRetry != nil {
			s.opts.OnRetry(err)
		}
		if wait && !sleep(ctx, bo.next()) {
			return ctx.Err()
		}
		st, err = s.open(ctx)
	}
}

// consume delivers a stream's events until it ends; it reports whether
// any event came, and why the stream ended (never nil).
func (s *watchState) consume(ctx context.Context, st *stream) (delivered bool, err error) {
	defer func() {
		if st.idled.Load() && ctx.Err() == nil {
			err = fmt.Errorf("no event in %s: %w", st.idle, err)
		}
	}()
	// seen holds the names of a snapshot, to find those it lacks.
	var seen map[string]struct{}
	if st.snapshot {
		seen = make(map[string]struct{})
	}
	sc := bufio.NewScanner(st.body)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventBytes)
	sc.Split(splitLines)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			st.touch()
			continue
		}
		ev, err := decodeEvent(line)
		if err != nil {
			return delivered, err
		}
		if ev.errCode != 0 {
			return delivered, &APIError{StatusCode: ev.errCode, Message: ev.errMessage}
		}
		delivered = true
		// The caller's pace is not the stream's health: the clock stops
		// while an event waits for the caller.
		st.pause()
		if err := s.apply(ctx, ev.Event, seen); err != nil {
			return delivered, err
		}
		st.touch()
		if ev.Type == Bookmark {
			seen = nil
		}
	}
	if err := sc.Err(); err != nil {
		return delivered, fmt.Errorf("while reading the watch stream: %w", err)
	}
	return delivered, errStreamEnded
}

// apply updates what the caller knows with ev and tells it what changed.
// seen is not nil while a snapshot is under way.
func (s *watchState) apply(ctx context.Context, ev Event, seen map[string]struct{}) error {
	if ev.Type == Bookmark {
		if seen != nil {
			if err := s.deleteUnseen(ctx, seen); err != nil {
				return err
			}
		} else if ev.ResourceVersion == s.rv {
			// A keep-alive: nothing new for the caller.
			return nil
		}
		s.rv, s.relist = ev.ResourceVersion, false
		return s.send(ctx, Event{Type: Bookmark, ResourceVersion: s.rv})
	}
	name := ev.Task.Name
	old, had := s.known[name]
	if ev.Type == Deleted {
		delete(s.known, name)
	} else {
		s.known[name] = ev.Task
	}
	if seen == nil {
		s.rv = ev.Task.ResourceVersion
		ev.ResourceVersion = s.rv
		return s.send(ctx, ev)
	}
	// In a snapshot, only what differs from what the caller knows is news.
	ev.ResourceVersion = s.rv
	switch {
	case ev.Type == Deleted:
		delete(seen, name)
		if !had {
			return nil
		}
	case !had:
		seen[name] = struct{}{}
		ev.Type = Added
	case old.ResourceVersion != ev.Task.ResourceVersion:
		seen[name] = struct{}{}
		ev.Type = Modified
	default:
		seen[name] = struct{}{}
		return nil
	}
	return s.send(ctx, ev)
}

// deleteUnseen reports as deleted every task a finished snapshot lacks.
func (s *watchState) deleteUnseen(ctx context.Context, seen map[string]struct{}) error {
	var gone []string
	for name := range s.known {
		if _, ok := seen[name]; !ok {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		t := s.known[name]
		delete(s.known, name)
		if err := s.send(ctx, Event{Type: Deleted, Task: t, ResourceVersion: s.rv}); err != nil {
			return err
		}
	}
	return nil
}

func (s *watchState) send(ctx context.Context, ev Event) error {
	select {
	case s.events <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wireEvent is one line of the stream.
type wireEvent struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// decoded is an Event, or an ERROR event's code and message.
type decoded struct {
	Event
	errCode    int
	errMessage string
}

func decodeEvent(line []byte) (decoded, error) {
	var w wireEvent
	if err := json.Unmarshal(line, &w); err != nil {
		return decoded{}, fmt.Errorf("while decoding a watch event: %w", err)
	}
	switch t := EventType(w.Type); t {
	case Added, Modified, Deleted:
		var task Task
		if err := json.Unmarshal(w.Object, &task); err != nil {
			return decoded{}, fmt.Errorf("while decoding a %s event: %w", t, err)
		}
		if task.Name == "" || task.ResourceVersion == "" {
			return decoded{}, fmt.Errorf("while decoding a %s event: the task has no name or no resourceVersion", t)
		}
		return decoded{Event: Event{Type: t, Task: task}}, nil
	case Bookmark:
		var b struct {
			ResourceVersion string `json:"resourceVersion"`
		}
		if err := json.Unmarshal(w.Object, &b); err != nil || b.ResourceVersion == "" {
			return decoded{}, fmt.Errorf("while decoding a BOOKMARK event: no resourceVersion in %s", w.Object)
		}
		return decoded{Event: Event{Type: Bookmark, ResourceVersion: b.ResourceVersion}}, nil
	case "ERROR":
		var e apiErrorBody
		if err := json.Unmarshal(w.Object, &e); err != nil {
			return decoded{}, fmt.Errorf("while decoding an ERROR event: %w", err)
		}
		if e.Code == 0 {
			// Not one of the host's: reconnecting is all there is to do.
			e.Code = http.StatusInternalServerError
		}
		return decoded{errCode: e.Code, errMessage: e.Message}, nil
	default:
		return decoded{}, fmt.Errorf("while decoding a watch event: unknown type %q", w.Type)
	}
}

// splitLines yields complete lines only: a line cut short by a dropped
// connection is an error, not an event.
func splitLines(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(bytes.TrimSpace(data)) > 0 {
		return 0, nil, errTruncated
	}
	if atEOF {
		return len(data), nil, nil
	}
	return 0, nil, nil
}

func isGone(err error) bool { return hasStatus(err, http.StatusGone) }

// isTerminal: the host refused the watch itself, which asking again will
// not change; 408 and 429 ask for a retry.
func isTerminal(err error) bool {
	var nas *notAStreamError
	if errors.As(err, &nas) {
		return true
	}
	var e *APIError
	if !errors.As(err, &e) {
		return false
	}
	switch e.StatusCode {
	case http.StatusGone, http.StatusRequestTimeout, http.StatusTooManyRequests:
		return false
	}
	return e.StatusCode/100 == 4
}

// backoff is a jittered, bounded exponential backoff: the jitter keeps the
// watchers of many clients from reconnecting in step after a host restart.
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	if b.d == 0 {
		b.d = backoffMin
	}
	d := b.d
	b.d = min(2*b.d, backoffMax)
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.d = 0 }

// sleep waits for d, or reports false once ctx is done.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
