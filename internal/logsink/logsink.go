// Package logsink holds the writer the executor's log goes through on its
// way to stderr. Writing a log line must never stall the executor: a log
// line is written under locks (the task table's among them), and the
// plugins' own log lines come through the host's log, so a stderr that
// nobody reads (a full pipe, a stuck log collector) would otherwise freeze
// the whole node agent once the pipe's 64 KiB are full. The sink queues
// lines up to a bound and a goroutine of its own writes them out; when the
// queue is full, lines are dropped and counted, and once the reader takes
// lines again the sink says how many were lost.
package logsink

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxBytes is how much log a sink queues for a slow reader before
// it drops lines.
const DefaultMaxBytes = 1 << 20

// Sink is an io.Writer whose Write never blocks. Each Write is taken to be
// one log line (hclog writes each line with one Write), kept or dropped
// whole.
type Sink struct {
	out io.Writer
	max int

	mu      sync.Mutex
	queued  []byte
	lost    uint64 // lines dropped since the last note
	closed  bool
	onDrop  func(n uint64)
	wake    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64 // all lines dropped
}

// New returns a sink that writes to out and queues at most max bytes
// (DefaultMaxBytes if max <= 0) besides the batch being written.
func New(out io.Writer, max int) *Sink {
	if max <= 0 {
		max = DefaultMaxBytes
	}
	s := &Sink{out: out, max: max, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// OnDrop sets fn, called (from the sink's goroutine, outside its lock) with
// the number of lines dropped once the reader has taken what was queued
// again: it is where the loss gets logged, through the sink itself.
func (s *Sink) OnDrop(fn func(n uint64)) {
	s.mu.Lock()
	s.onDrop = fn
	s.mu.Unlock()
}

// Write queues p, or drops it if the queue has no room for it. It never
// blocks on the output and never fails: a log line that cannot be written
// is no reason to fail what was being logged.
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.closed || len(s.queued)+len(p) > s.max {
		s.lost++
		s.mu.Unlock()
		s.dropped.Add(1)
		return len(p), nil
	}
	s.queued = append(s.queued, p...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return len(p), nil
}

// Dropped returns how many lines were dropped since the sink was made.
func (s *Sink) Dropped() uint64 { return s.dropped.Load() }

// run writes what is queued, batch by batch, until the sink is closed and
// everything queued is out.
func (s *Sink) run() {
	defer close(s.done)
	var batch []byte
	for {
		s.mu.Lock()
		batch, s.queued = s.queued, batch[:0]
		lost, onDrop, closed := uint64(0), s.onDrop, s.closed
		if len(batch) == 0 && s.lost > 0 && onDrop != nil && !closed {
			// The reader has taken everything up to here: say what it
			// missed, in order, before what follows.
			lost, s.lost = s.lost, 0
		}
		s.mu.Unlock()
		if len(batch) > 0 {
			// A failed write (a closed stderr) has nowhere to be told.
			_, _ = s.out.Write(batch)
			continue
		}
		if lost > 0 {
			onDrop(lost)
			continue
		}
		if closed {
			return
		}
		<-s.wake
	}
}

// Flush waits until what was queued before it is written, or timeout
// passes, and stops the sink: later lines are dropped. Call it before the
// process exits, so its last lines (the reason it exits) are not lost.
func (s *Sink) Flush(timeout time.Duration) {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-s.done:
	case <-t.C:
	}
}
