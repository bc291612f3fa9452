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

// flusher makes records durable in batches: on a file system with a
// journal, the first fsync of a batch commits it for all of them; without
// one, the batch's fsyncs run at once and the block layer merges their
// cache flushes. Either way a batch costs about one commit however many
// records it holds, and the commits stay off the path of the requests that
// wait on their own (creates, deletions).
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
	f.armLocked()
}

// kick asks for a flush of the create log's entries (a checkpoint).
func (f *flusher) kick() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.armLocked()
}

func (f *flusher) armLocked() {
	if f.timer == nil && !f.closed {
		f.timer = time.AfterFunc(FlushInterval, f.flush)
	}
}

// flush syncs every pending final state, and
// checkpoints the create log, all at once (see Create's commit).
func (f *flusher) flush() {
	f.mu.Lock()
	names := f.pending
	f.pending = nil
	f.timer = nil
	f.mu.Unlock()
	// Only the record: its directory entry was made durable with the
	// create (or the create log restores it).
	finals := make([]string, 0, len(names))
	for name := range names {
		finals = append(finals, filepath.Join(f.store.Dir(name), RecordFile))
	}
	l := f.store.clog
	if l == nil {
		f.store.syncLoosely(finals)
		return
	}
	if err := l.checkpoint(f.store, false, finals...); err != nil {
		// The entries stay in the log, which a restart replays.
		f.store.log.Warn("cannot make new task records durable; will retry", "error", err)
		f.kick()
	}
}

// syncLoosely syncs paths at once; a path that cannot be synced (a task
// removed meanwhile) is skipped.
func (s *Store) syncLoosely(paths []string) {
	_ = parallel(len(paths), func(i int) error {
		if err := syncOne(paths[i]); err != nil {
			s.log.Debug("cannot sync a task's file", "path", paths[i], "error", err)
		}
		return nil
	})
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
