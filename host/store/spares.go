package store

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Creating a directory and files is by far the dearest part of accepting a
// task on some disks (measured on the development machines: 0.6-0.9 ms for
// a directory with three files, 0.1 ms to rename a prepared one into
// place). So the store keeps a few task directories prepared ahead of time,
// off the path of any request, and tops them up in the background.

const (
	// wantSpares is how many prepared directories the store keeps.
	wantSpares = 8
	// spareRefillDelay lets a burst of creates pass before the top-up
	// competes with it for the disk.
	spareRefillDelay = 20 * time.Millisecond
)

// The files every task directory starts with, empty: the record (to which
// the final state is appended too). Not the output files: a runtime creates
// those at a stream's first output, and most tasks leave at least one
// stream empty.
var spareFiles = []struct {
	name string
	mode os.FileMode
}{{RecordFile, 0o600}}

type spares struct {
	dir string
	log hclog.Logger
	seq atomic.Uint64

	mu      sync.Mutex
	ready   []string
	filling bool
	closed  bool
	wg      sync.WaitGroup
}

func newSpares(dir string, log hclog.Logger) *spares {
	s := &spares{dir: dir, log: log}
	s.seq.Store(uint64(time.Now().UnixNano()))
	return s
}

// take returns a prepared directory, preparing one on the spot if none is
// ready.
func (s *spares) take() (string, error) {
	s.mu.Lock()
	var dir string
	if n := len(s.ready); n > 0 {
		dir = s.ready[n-1]
		s.ready = s.ready[:n-1]
	}
	if !s.filling && !s.closed {
		s.filling = true
		s.wg.Add(1)
		time.AfterFunc(spareRefillDelay, func() { defer s.wg.Done(); s.fill() })
	}
	s.mu.Unlock()
	if dir != "" {
		return dir, nil
	}
	return s.make()
}

// start tops the prepared directories up in the background.
func (s *spares) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filling || s.closed {
		return
	}
	s.filling = true
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.fill() }()
}

// close stops the top-ups and removes the prepared directories.
func (s *spares) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.ready {
		_ = os.RemoveAll(d)
	}
	s.ready = nil
}

// fill tops the prepared directories up; the caller has set filling.
func (s *spares) fill() {
	defer func() {
		s.mu.Lock()
		s.filling = false
		s.mu.Unlock()
	}()
	for {
		s.mu.Lock()
		n, closed := len(s.ready), s.closed
		s.mu.Unlock()
		if n >= wantSpares || closed {
			return
		}
		dir, err := s.make()
		if err != nil {
			// A full or read-only disk: creates will say so themselves.
			s.log.Debug("cannot prepare a task directory", "error", err)
			return
		}
		s.mu.Lock()
		s.ready = append(s.ready, dir)
		s.mu.Unlock()
	}
}

// make prepares a directory. It syncs nothing: the commit of the create
// that uses it syncs the record, the directory and the rename.
func (s *spares) make() (string, error) {
	dir := filepath.Join(s.dir, fmt.Sprintf("%s%d", sparePrefix, s.seq.Add(1)))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	for _, f := range spareFiles {
		fh, err := os.OpenFile(filepath.Join(dir, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
		if err == nil {
			err = fh.Close()
		}
		if err != nil {
			_ = os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}
