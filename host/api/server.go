// Package api serves the host's HTTP API: the task endpoints of the users'
// documentation and /health. Client mistakes get a 4xx with a JSON
// {"code", "message"} body and change nothing.
package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/julienschmidt/httprouter"

	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// MaxBodyBytes bounds a request body.
const MaxBodyBytes = 1 << 20

// Tasks is what the API needs of the controller.
type Tasks interface {
	Create(ctx context.Context, t tasks.NewTask) (tasks.Task, error)
	Delete(ctx context.Context, name string, grace *time.Duration) error
	Sync(ctx context.Context, desired []tasks.NewTask) ([]tasks.Task, error)
	Get(name string) (tasks.Task, bool)
	Await(name string) (tasks.Task, <-chan struct{}, bool)
	List() []tasks.Task
	// Snapshot is List with the resource version it is at.
	Snapshot() ([]tasks.Task, uint64)
	// Watch begins a watch of the changes (after from, or with a
	// snapshot when from is nil).
	Watch(from *uint64) (*tasks.Watch, error)
}

// Handler returns the API's HTTP handler; opts add the optional endpoints.
func Handler(tasks Tasks, log hclog.Logger, opts ...Option) http.Handler {
	s := &server{tasks: tasks, log: log}
	for _, o := range opts {
		o(s)
	}
	r := &router{Router: httprouter.New(), metrics: s.metrics}
	r.POST("/tasks", s.create)
	r.GET("/tasks/:name", s.get)
	r.DELETE("/tasks/:name", s.delete)
	r.POST("/setTasks", s.setTasks)
	r.GET("/getTasks", s.list)
	r.GET("/health", s.health)
	s.routeObservability(r)
	r.NotFound = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", req.Method, req.URL.Path))
	})
	r.MethodNotAllowed = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed on %s", req.Method, req.URL.Path))
	})
	r.PanicHandler = func(w http.ResponseWriter, req *http.Request, v interface{}) {
		log.Error("panic while serving a request", "method", req.Method, "path", req.URL.Path, "panic", v)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
	return r
}

type server struct {
	tasks Tasks
	log   hclog.Logger
	// Set by the options (observability.go).
	dirs     TaskDirs
	stop     <-chan struct{}
	metrics  *metrics.Metrics
	runtimes Runtimes
	// maxSpecBytes bounds a task's spec, as JSON (0: no bound).
	maxSpecBytes int
	// defaultRuntime names the runtime of a kind's tasks whose spec
	// names none (nil: not shown).
	defaultRuntime func(sdk.Kind) string
	// watchOpts and watchStop: see WithWatch (nil watchStop: no
	// watches).
	watchOpts WatchOptions
	watchStop <-chan struct{}
	// lines are the latest events as the watches write them.
	lines eventLines
}

// WithDefaultRuntimes has GET /runtimes tell, for each runtime, the kinds
// of task it runs by default: those for which of names it.
func WithDefaultRuntimes(of func(sdk.Kind) string) Option {
	return func(s *server) { s.defaultRuntime = of }
}

// WithMaxSpecBytes refuses tasks whose spec, as JSON, is larger than n
// bytes (413): with --max-tasks it bounds the memory specs take.
func WithMaxSpecBytes(n int) Option {
	return func(s *server) { s.maxSpecBytes = n }
}

// checkSize refuses a spec larger than the executor keeps.
func (s *server) checkSize(t taskIn) (int, error) {
	if s.maxSpecBytes <= 0 {
		return 0, nil
	}
	b, err := json.Marshal(t.Spec)
	if err != nil {
		return http.StatusBadRequest, fmt.Errorf("task %q: while encoding its spec: %v", t.Name, err)
	}
	if len(b) > s.maxSpecBytes {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("task %q: its spec is %d bytes as JSON, more than the executor keeps per task (%d, --max-spec-bytes)", t.Name, len(b), s.maxSpecBytes)
	}
	return 0, nil
}

func (s *server) health(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "healthy"})
}

// MaxWait bounds the wait of GET /tasks/{name}?wait=.
const MaxWait = 5 * time.Minute

// get answers with a task. With ?wait=<duration> (a Go duration, up to
// MaxWait) it is a long poll: the answer comes as soon as the task has
// terminated, or when the wait is over, so a client need not poll.
func (s *server) get(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	var wait time.Duration
	if v := req.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > MaxWait {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("wait %q must be a duration from 0s to %s", v, MaxWait))
			return
		}
		wait = d
	}
	t, ended, ok := s.tasks.Await(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %q not found", name))
		return
	}
	if wait > 0 && t.State.Terminated == nil {
		// The server's timeouts count from the request; the answer of a
		// long poll comes when the wait is over (and a read timeout would
		// end the request's context before).
		holdOpen(w, wait)
		timer := time.NewTimer(wait)
		defer timer.Stop()
		select {
		case <-ended:
			if t, ok = s.tasks.Get(name); !ok {
				writeError(w, http.StatusNotFound, fmt.Sprintf("task %q was deleted", name))
				return
			}
		case <-timer.C:
			t, ok = s.tasks.Get(name)
		case <-req.Context().Done():
			return
		}
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Sprintf("task %q not found", name))
			return
		}
	}
	writeJSON(w, http.StatusOK, toAPI(t))
}

func (s *server) create(w http.ResponseWriter, req *http.Request, _ httprouter.Params) {
	var in taskIn
	if status, err := decode(w, req, &in); err != nil {
		writeError(w, status, err.Error())
		return
	}
	if err := in.resolve(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := validate(in); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if code, err := s.checkSize(in); err != nil {
		writeError(w, code, err.Error())
		return
	}
	t, err := s.tasks.Create(req.Context(), tasks.NewTask{Name: in.Name, Spec: *in.Spec, Format: in.format})
	if err != nil {
		s.fail(w, req, err)
		return
	}
	writeJSON(w, http.StatusCreated, toAPI(t))
}

func (s *server) delete(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
	var grace *time.Duration
	if v := req.URL.Query().Get("gracePeriodSeconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 || n > 24*3600 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("gracePeriodSeconds %q must be a whole number of seconds from 0 to 86400", v))
			return
		}
		g := time.Duration(n) * time.Second
		grace = &g
	}
	if err := s.tasks.Delete(req.Context(), ps.ByName("name"), grace); err != nil {
		s.fail(w, req, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) setTasks(w http.ResponseWriter, req *http.Request, _ httprouter.Params) {
	var raw json.RawMessage
	if status, err := decode(w, req, &raw); err != nil {
		writeError(w, status, err.Error())
		return
	}
	b := bytes.TrimSpace(raw)
	if bytes.Equal(b, []byte("null")) {
		// What Go's encoding/json makes of a nil slice: the empty set.
		raw = json.RawMessage("[]")
	} else if len(b) == 0 || b[0] != '[' {
		writeError(w, http.StatusBadRequest, "the body must be a JSON array of tasks")
		return
	}
	var in []taskIn
	if err := strictUnmarshal(raw, &in); err != nil {
		writeError(w, http.StatusBadRequest, describeJSONError(err))
		return
	}
	desired := make([]tasks.NewTask, 0, len(in))
	seen := make(map[string]bool, len(in))
	for i, t := range in {
		if err := t.resolve(); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("task [%d]: %v", i, err))
			return
		}
		if err := validate(t); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("task [%d]: %v", i, err))
			return
		}
		if code, err := s.checkSize(t); err != nil {
			writeError(w, code, fmt.Sprintf("task [%d]: %v", i, err))
			return
		}
		if seen[t.Name] {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("task name %q appears more than once", t.Name))
			return
		}
		seen[t.Name] = true
		desired = append(desired, tasks.NewTask{Name: t.Name, Spec: *t.Spec, Format: t.format})
	}
	ts, err := s.tasks.Sync(req.Context(), desired)
	if err != nil {
		s.fail(w, req, err)
		return
	}
	writeList(w, ts)
}

// fail answers with the status code an error from the controller calls for.
func (s *server) fail(w http.ResponseWriter, req *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, tasks.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, tasks.ErrExists), errors.Is(err, tasks.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, tasks.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, tasks.ErrTooMany):
		code = http.StatusTooManyRequests
	case errors.Is(err, store.ErrNoSpace):
		code = http.StatusInsufficientStorage
	case errors.Is(err, tasks.ErrUnavailable), errors.Is(err, store.ErrReadOnly):
		code = http.StatusServiceUnavailable
	}
	if code >= 500 {
		s.log.Error("request failed", "method", req.Method, "path", req.URL.Path, "code", code, "error", err)
	}
	writeError(w, code, err.Error())
}

// holdOpen lifts the server's read timeout from a request that has been
// read and is answered later, and gives its answer until within from now
// plus StreamWriteTimeout to be written. Its connection is still closed
// when the client goes.
func holdOpen(w http.ResponseWriter, within time.Duration) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Now().Add(within + StreamWriteTimeout))
}

// StreamWriteTimeout bounds each write of a long answer (a long poll's,
// a log stream's) to a client that does not read.
const StreamWriteTimeout = 30 * time.Second

// bodySlots bounds the request bodies read at once, and so the memory they
// take: at most MaxBodyBytes each, however many clients send slowly.
var bodySlots = make(chan struct{}, 64)

// bodySlotWait is how long a request waits for a slot before a 503.
const bodySlotWait = 10 * time.Second

// decode reads a JSON body strictly into v: one value, no unknown fields,
// at most MaxBodyBytes.
func decode(w http.ResponseWriter, req *http.Request, v any) (int, error) {
	slot := time.NewTimer(bodySlotWait)
	select {
	case bodySlots <- struct{}{}:
		slot.Stop()
	case <-slot.C:
		return http.StatusServiceUnavailable, errors.New("too many request bodies are being read at once; retry")
	case <-req.Context().Done():
		slot.Stop()
		return http.StatusServiceUnavailable, errors.New("the request ended while it waited to be read")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, MaxBodyBytes))
	<-bodySlots
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("the request body is larger than %d bytes", MaxBodyBytes)
		}
		return http.StatusBadRequest, fmt.Errorf("while reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return http.StatusBadRequest, errors.New("the request body is empty")
	}
	if err := strictUnmarshal(body, v); err != nil {
		return http.StatusBadRequest, errors.New(describeJSONError(err))
	}
	return 0, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("unexpected data after the JSON value")
	}
	return nil
}

func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the body"
		}
		return fmt.Sprintf("%s: expected %s, got JSON %s", field, typ.Type, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "malformed JSON: unexpected end of input"
	}
	return "invalid JSON: " + err.Error()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"code":500,"message":"cannot encode the response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// writeList answers 200 with the tasks as a JSON array, encoded one task
// at a time as the client reads: a list of thousands of large specs never
// sits in memory whole, however slowly it is read.
func writeList(w http.ResponseWriter, ts []tasks.Task) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	_ = bw.WriteByte('[')
	for i, t := range ts {
		if i > 0 {
			_ = bw.WriteByte(',')
		}
		// An error is the client's connection failing: the answer is cut
		// short, which it cannot read anyway.
		if enc.Encode(toAPI(t)) != nil {
			return
		}
	}
	_, _ = bw.WriteString("]\n")
	_ = bw.Flush()
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Code: code, Message: msg})
}
