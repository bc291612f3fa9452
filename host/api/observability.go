package api

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"

	"github.com/julienschmidt/httprouter"

	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/sdk"
)

// Option adds an optional part to the API.
type Option func(*server)

// TaskDirs locates a task's directory (package store).
type TaskDirs interface {
	Dir(name string) string
}

// Runtimes describes the installed runtimes (package dispatch).
type Runtimes interface {
	Status() []dispatch.RuntimeStatus
	// Refused maps the runtimes whose plugins were refused to why.
	Refused() map[string]string
}

// WithLogs serves GET /tasks/{name}/logs from the tasks' directories.
// Streams that follow a task end when stop is closed: the server's
// shutdown waits for the requests in flight, and a follower would
// otherwise hold it up until its task ends.
func WithLogs(dirs TaskDirs, stop <-chan struct{}) Option {
	return func(s *server) { s.dirs, s.stop = dirs, stop }
}

// WithMetrics serves GET /metrics and counts every request.
func WithMetrics(m *metrics.Metrics) Option {
	return func(s *server) { s.metrics = m }
}

// WithRuntimes serves GET /runtimes.
func WithRuntimes(rts Runtimes) Option {
	return func(s *server) { s.runtimes = rts }
}

// routeObservability registers the endpoints of the options given.
func (s *server) routeObservability(r *router) {
	if s.dirs != nil {
		r.GET("/tasks/:name/logs", s.logs)
	}
	if s.metrics != nil {
		h := s.metrics.Handler()
		r.GET("/metrics", func(w http.ResponseWriter, req *http.Request, _ httprouter.Params) { h.ServeHTTP(w, req) })
	}
	if s.runtimes != nil {
		r.GET("/runtimes", s.listRuntimes)
		r.GET("/readyz", s.ready)
	}
}

// Runtime is an installed runtime as GET /runtimes shows it.
type Runtime struct {
	Name       string `json:"name"`
	PluginPath string `json:"pluginPath"`
	// Builtin: task-executor brings this runtime (PluginPath is then its
	// own executable, started again as the plugin).
	Builtin         bool       `json:"builtin"`
	ProtocolVersion int        `json:"protocolVersion"`
	PluginVersion   string     `json:"pluginVersion"`
	Kinds           []sdk.Kind `json:"kinds"`
	// Healthy: the plugin is up now.
	Healthy   bool   `json:"healthy"`
	Restarts  int    `json:"restarts"`
	LastError string `json:"lastError,omitempty"`
	// Warnings: what the plugin found wrong in its environment at start.
	Warnings []string `json:"warnings,omitempty"`
	// RuntimeOptions: the runtime takes spec.runtimeOptions.
	RuntimeOptions bool `json:"runtimeOptions"`
	// DefaultFor: the kinds of task that run on this runtime when their
	// spec names none (the built-in defaults, or --default-runtime).
	DefaultFor []sdk.Kind `json:"defaultFor,omitempty"`
}

// ready answers 200 once every runtime the executor found is up, and 503
// saying which is not and why otherwise: a readiness probe, where /health
// says only that the executor answers.
func (s *server) ready(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	var down []string
	for _, st := range s.runtimes.Status() {
		if st.Healthy {
			continue
		}
		name := st.Name
		if name == "" {
			name = filepath.Base(st.Path)
		}
		why := st.LastError
		if why == "" {
			why = "its plugin is starting"
		}
		down = append(down, fmt.Sprintf("runtime %s is down: %s", name, why))
	}
	for name, why := range s.runtimes.Refused() {
		down = append(down, fmt.Sprintf("runtime %s was refused: %s", name, why))
	}
	if len(down) > 0 {
		sort.Strings(down)
		writeError(w, http.StatusServiceUnavailable, "not ready: "+strings.Join(down, "; "))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (s *server) listRuntimes(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	sts := s.runtimes.Status()
	out := make([]Runtime, 0, len(sts))
	for _, st := range sts {
		kinds := st.Kinds
		if kinds == nil {
			kinds = []sdk.Kind{}
		}
		var defaultFor []sdk.Kind
		if s.defaultRuntime != nil {
			for _, k := range []sdk.Kind{sdk.KindProcess, sdk.KindContainer} {
				if st.Name != "" && s.defaultRuntime(k) == st.Name {
					defaultFor = append(defaultFor, k)
				}
			}
		}
		out = append(out, Runtime{
			Name: st.Name, PluginPath: st.Path, Builtin: st.Builtin, ProtocolVersion: st.ProtocolVersion,
			PluginVersion: st.Version, Kinds: kinds, Healthy: st.Healthy,
			Restarts: st.Restarts, LastError: st.LastError, Warnings: st.Warnings, DefaultFor: defaultFor,
			RuntimeOptions: st.RuntimeOptions,
		})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].PluginPath < out[j].PluginPath
	})
	writeJSON(w, http.StatusOK, out)
}

// router is httprouter's router counting every request by its route
// pattern. httprouter v1.3 does not tell a handler which pattern matched,
// so the handlers registered here note it themselves; a raw path would make
// one series per task name.
type router struct {
	*httprouter.Router
	metrics *metrics.Metrics
	// routes lists what is registered, for the test that holds
	// docs/openapi.yaml to the router.
	routes []route
}

type route struct{ method, path string }

// routeKey carries a *string the matched handler fills with its pattern.
type routeKey struct{}

// unmatched labels the requests no route matched (404 and 405 answers).
const unmatched = "unmatched"

func (r *router) Handle(method, path string, h httprouter.Handle) {
	r.routes = append(r.routes, route{method, path})
	r.Router.Handle(method, path, func(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
		if p, ok := req.Context().Value(routeKey{}).(*string); ok {
			*p = path
		}
		h(w, req, ps)
	})
}

func (r *router) GET(path string, h httprouter.Handle)     { r.Handle(http.MethodGet, path, h) }
func (r *router) HEAD(path string, h httprouter.Handle)    { r.Handle(http.MethodHead, path, h) }
func (r *router) OPTIONS(path string, h httprouter.Handle) { r.Handle(http.MethodOptions, path, h) }
func (r *router) POST(path string, h httprouter.Handle)    { r.Handle(http.MethodPost, path, h) }
func (r *router) PUT(path string, h httprouter.Handle)     { r.Handle(http.MethodPut, path, h) }
func (r *router) PATCH(path string, h httprouter.Handle)   { r.Handle(http.MethodPatch, path, h) }
func (r *router) DELETE(path string, h httprouter.Handle)  { r.Handle(http.MethodDelete, path, h) }

func (r *router) Handler(method, path string, h http.Handler) {
	r.Handle(method, path, func(w http.ResponseWriter, req *http.Request, _ httprouter.Params) { h.ServeHTTP(w, req) })
}

func (r *router) HandlerFunc(method, path string, h http.HandlerFunc) { r.Handler(method, path, h) }

func (r *router) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if r.metrics == nil {
		r.Router.ServeHTTP(w, req)
		return
	}
	route := unmatched
	sw := &statusWriter{ResponseWriter: w}
	r.Router.ServeHTTP(sw, req.WithContext(context.WithValue(req.Context(), routeKey{}, &route)))
	r.metrics.HTTPRequest(methodLabel(req.Method), route, sw.status())
}

// methodLabel bounds the method label: clients may send any token.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// statusWriter notes the status code of an answer.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.code == 0 {
		s.code = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Flush keeps streaming answers (logs?follow=true) streaming.
func (s *statusWriter) Flush() {
	if s.code == 0 {
		s.code = http.StatusOK
	}
	_ = http.NewResponseController(s.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *statusWriter) status() int {
	if s.code == 0 {
		return http.StatusOK
	}
	return s.code
}
