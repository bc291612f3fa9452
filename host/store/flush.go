package store

import (
	"path/filepath"
	"sync"
	"time"
)

// FlushInterval bounds how long a final state written with SetFinal may
// stay only in the page cache. Such a record already survives the death of any
// process; the flush is for a power loss.
const FlushInterval = 50 * time.Millisecond

// flusher makes records durable in batches: the first fsync of a batch
// commits the file system's journal for all of them, so a batch costs about
// one commit however many records it holds, and the commits stay off the
// path of the requests that wait on their own (creates, deletions).
type flusher struct {
	store *Store

	mu      sync.Mutex
	pending map[string]bool
	timer   *time.Timer
	closed  bool
}

func (f *flusher) add(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pending == nil {
		f.pending = map[string]bool{}
	}
	f.pending[name] = true
	if f.timer == nil && !f.closed {
		f.timer = time.AfterFunc(FlushInterval, f.flush)
	}
}

// flush syncs every pending final state and its directory.
func (f *flusher) flush() {
	f.mu.Lock()
	names := f.pending
	f.pending = nil
	f.timer = nil
	f.mu.Unlock()
	for name := range names {
		dir := f.store.Dir(name)
		if err := syncPath(filepath.Join(dir, finalFile), dir); err != nil {
			// A task removed meanwhile has nothing left to sync.
			f.store.log.Debug("cannot sync a task's final state", "task", name, "error", err)
		}
	}
}

// close flushes what is pending and stops taking more timers.
func (f *flusher) close() {
	f.mu.Lock()
	f.closed = true
	if f.timer != nil {
		f.timer.Stop()
	}
	f.mu.Unlock()
	f.flush()
}
