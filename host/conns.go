package host

import (
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// The HTTP server's bounds. Every client the executor has is on the node
// or in the cluster, sends small requests at once and reads answers as
// they come; a client that does not is shed within these.
const (
	// maxHeaderBytes bounds a request's header block (net/http's default
	// is 1 MiB, which 1,000 unfinished requests turn into a GiB).
	maxHeaderBytes = 32 << 10
	// readHeaderTimeout bounds the wait for a request's header block.
	readHeaderTimeout = 10 * time.Second
	// readTimeout bounds the reading of a whole request, body included.
	readTimeout = 30 * time.Second
	// writeTimeout bounds the writing of an answer; long polls and log
	// streams set deadlines of their own (package api).
	writeTimeout = 30 * time.Second
	// idleTimeout closes a keep-alive connection left unused.
	idleTimeout = 60 * time.Second
	// evictAfter: a connection idle (between requests, or before its first
	// byte) for this long is closed to make room for a new one when the
	// cap is reached.
	evictAfter = time.Second
)

// connLimit is a listener that holds at most max connections open. At the
// cap it closes the connection idle longest (a keep-alive connection
// between requests, or one that has not sent a byte for evictAfter) to make
// room, and refuses the new one at once, with a 503, when none is idle:
// an attacker's idle connections cannot starve a probe, and busy ones are
// shed by the server's timeouts.
type connLimit struct {
	net.Listener
	max int
	log hclog.Logger

	mu    sync.Mutex
	conns map[net.Conn]*connInfo
	// refused counts refusals since the last warning; warned is when that
	// was (refusals are logged at most every 10 s).
	refused, evicted int
	warned           time.Time
}

type connInfo struct {
	state http.ConnState
	since time.Time
}

func newConnLimit(ln net.Listener, max int, log hclog.Logger) *connLimit {
	return &connLimit{Listener: ln, max: max, log: log, conns: map[net.Conn]*connInfo{}}
}

// Accept returns the next connection there is room for.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.admit(c) {
			return c, nil
		}
		refuse(c)
	}
}

// admit counts c in, making room if it can; false: no room.
func (l *connLimit) admit(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if len(l.conns) >= l.max {
		var oldest net.Conn
		var at time.Time
		for oc, info := range l.conns {
			idle := info.state == http.StateIdle || (info.state == http.StateNew && now.Sub(info.since) >= evictAfter)
			if idle && (oldest == nil || info.since.Before(at)) {
				oldest, at = oc, info.since
			}
		}
		if oldest == nil {
			l.refused++
			l.warnLocked(now)
			return false
		}
		delete(l.conns, oldest)
		_ = oldest.Close()
		l.evicted++
		l.warnLocked(now)
	}
	l.conns[c] = &connInfo{state: http.StateNew, since: now}
	return true
}

// warnLocked says, at most every 10 s, how many connections were closed
// or refused at the cap.
func (l *connLimit) warnLocked(now time.Time) {
	if now.Sub(l.warned) < 10*time.Second {
		return
	}
	l.log.Warn("at the cap on open API connections: closed idle ones, refused new ones while none was idle",
		"max", l.max, "closedIdle", l.evicted, "refused", l.refused)
	l.warned, l.evicted, l.refused = now, 0, 0
}

// track is the server's ConnState hook.
func (l *connLimit) track(c net.Conn, st http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn() // admit saw the connection under TLS
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	default:
		if info := l.conns[c]; info != nil {
			info.state, info.since = st, time.Now()
		}
	}
}

// refused is the whole answer to a connection there is no room for.
const refused = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 73\r\n\r\n" +
	`{"code":503,"message":"too many open connections to the executor; retry"}`

// refuse answers c with a 503 and closes it, without waiting on a client
// that does not read.
func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write([]byte(refused))
	_ = c.Close()
}
