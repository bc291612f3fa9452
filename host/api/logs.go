package api

// GET /tasks/{name}/logs serves a task's output as plain lines; package
// logs reads it (which files, in which order, how lines are cut, how a
// follower ends).

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"

	"github.com/julienschmidt/httprouter"

	"github.com/opensandbox/task-executor/host/logs"
)

func parseLogQuery(v url.Values) (logs.Options, error) {
	o := logs.Options{Stdout: true, Stderr: true, TailLines: logs.NoLimit, LimitBytes: logs.NoLimit}
	switch s := v.Get("stream"); s {
	case "", "all":
	case "stdout", "stderr":
		o.Stdout, o.Stderr = s == "stdout", s == "stderr"
	default:
		return o, fmt.Errorf("stream %q must be stdout, stderr or all", s)
	}
	if s := v.Get("follow"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return o, fmt.Errorf("follow %q must be true or false", s)
		}
		o.Follow = b
	}
	if s := v.Get("tailLines"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return o, fmt.Errorf("tailLines %q must be a whole number of lines, 0 or more", s)
		}
		o.TailLines = n
	}
	if s := v.Get("limitBytes"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			return o, fmt.Errorf("limitBytes %q must be a whole number of bytes, 1 or more", s)
		}
		o.LimitBytes = n
	}
	return o, nil
}

// cancelOn returns a context of ctx that is also cancelled once stop is
// closed: a long-lived answer (a follow, a watch) ends with the server.
func cancelOn(ctx context.Context, stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (s *server) logs(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	opts, err := parseLogQuery(req.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	_, ended, ok := s.tasks.Await(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %q not found", name))
		return
	}
	opts.Ended, opts.Log = ended, s.log.With("task", name)
	r, err := logs.Open(s.dirs.Dir(name), opts)
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %q has no output (deleted meanwhile?)", name))
		return
	}
	if err != nil {
		s.log.Error("cannot open a task's output", "task", name, "error", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer r.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	ctx := req.Context()
	if r.Following() {
		// The server's shutdown waits for the requests in flight: a
		// follower would otherwise hold it up until its task ends.
		var cancel context.CancelFunc
		ctx, cancel = cancelOn(ctx, s.stop)
		defer cancel()
		holdOpen(w, 0)
	}
	if err := r.Copy(ctx, &logAnswer{w: w, stream: r.Following()}); err != nil {
		s.log.Warn("reading a task's output failed", "task", name, "error", err)
	}
}

// logAnswer is the answer's body as package logs writes it: each Flush
// sends what it has been given to the client at once.
type logAnswer struct {
	w http.ResponseWriter
	// stream: the server's timeouts count from the request; a stream
	// instead gives each round of writes, from its first to the Flush
	// that ends it, its own, so that only a client that stops reading is
	// cut off.
	stream bool
	held   bool
}

func (a *logAnswer) Write(b []byte) (int, error) {
	a.hold()
	return a.w.Write(b)
}

func (a *logAnswer) Flush() error {
	a.hold()
	a.held = false
	if err := http.NewResponseController(a.w).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

func (a *logAnswer) hold() {
	if a.stream && !a.held {
		holdOpen(a.w, 0)
		a.held = true
	}
}
