package host

import (
	"net/http"
	"sync"
	"time"
)

// startWait bounds how long a request waits for the executor to finish
// starting (its runtimes launched and their tasks recovered) before it is
// answered 503.
const startWait = 25 * time.Second

// gate serves from the first moment: GET /health at once, GET /readyz as
// not ready, and every other request once the executor has started (open),
// waiting at most startWait. A probe never waits on a runtime that is slow
// to start or recover.
type gate struct {
	once  sync.Once
	ready chan struct{}
	h     http.Handler
}

func newGate() *gate { return &gate{ready: make(chan struct{})} }

// open lets requests through to h.
func (g *gate) open(h http.Handler) {
	g.once.Do(func() {
		g.h = h
		close(g.ready)
	})
}

func (g *gate) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	select {
	case <-g.ready:
		g.h.ServeHTTP(w, req)
		return
	default:
	}
	if req.Method == http.MethodGet {
		switch req.URL.Path {
		case "/health":
			answer(w, http.StatusOK, `{"status":"healthy"}`)
			return
		case "/readyz":
			answer(w, http.StatusServiceUnavailable, `{"code":503,"message":"not ready: the executor is starting (launching its runtimes, recovering their tasks)"}`)
			return
		}
	}
	t := time.NewTimer(startWait)
	defer t.Stop()
	select {
	case <-g.ready:
		g.h.ServeHTTP(w, req)
	case <-t.C:
		answer(w, http.StatusServiceUnavailable, `{"code":503,"message":"the executor is still starting (launching its runtimes, recovering their tasks); retry"}`)
	case <-req.Context().Done():
	}
}

func answer(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}
