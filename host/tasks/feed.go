package tasks

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// EventType says what a change did to a task, as in a Kubernetes watch.
type EventType string

// The types of change.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
)

// Event is one change of one task: the task as it is after the change, its
// ResourceVersion the change's.
type Event struct {
	Type EventType
	Task Task
}

// ErrGone is returned for a watch that asks to resume from history the
// host no longer keeps (too old, or from before the host's restart): the
// client must list again.
var ErrGone = errors.New("gone")

// ErrFellBehind ends a watch whose reader fell a whole history behind.
var ErrFellBehind = errors.New("the watcher fell behind the history the executor keeps")

// DefaultHistory is how many changes the feed keeps for watches to resume
// from.
const DefaultHistory = 10000

// leaseStep is how far ahead of the resource versions handed out the
// lease on disk runs: one write per this many changes, and a restart skips
// at most this many versions.
const leaseStep = 1 << 20

// feed is the change feed: every visible change of every task, in order,
// each with a resource version. Resource versions are strictly increasing
// and never reused, across restarts too: the store keeps a lease, the
// highest version the host may hand out, written ahead of use; a restarted
// host begins after the last lease. The feed keeps the latest changes in a
// ring, from which every watch reads: a watch holds no copy of its own, so
// a reader that stops reading costs the host nothing but its place in the
// ring.
type feed struct {
	log hclog.Logger
	// lease writes a new lease durably (Store.LeaseVersions).
	lease func(limit uint64) error

	mu sync.Mutex
	// rv is the last resource version handed out; limit the lease.
	rv, limit uint64
	extending bool
	// ring holds the latest changes; ring[head] is the oldest. Every change
	// after floor is in it (their versions are contiguous).
	ring  []Event
	head  int
	n     int
	floor uint64
	// notify is closed, and replaced, at each change.
	notify chan struct{}
}

func newFeed(history int, first, limit uint64, lease func(uint64) error, log hclog.Logger) *feed {
	if history <= 0 {
		history = DefaultHistory
	}
	return &feed{log: log, lease: lease, rv: first - 1, limit: limit, ring: make([]Event, history), notify: make(chan struct{})}
}

// assign hands out the next resource version.
func (f *feed) assign() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.assignLocked()
}

func (f *feed) assignLocked() uint64 {
	f.rv++
	if f.rv > f.limit {
		// Only when changes outrun a lease write by a million: wait for one.
		if err := f.lease(f.rv + leaseStep); err != nil {
			f.log.Error("cannot record the resource versions' lease; a restart may hand out versions again", "error", err)
		}
		f.limit = f.rv + leaseStep
	} else if f.limit-f.rv < leaseStep/2 && !f.extending {
		f.extending = true
		next := f.limit + leaseStep
		go func() {
			err := f.lease(next)
			f.mu.Lock()
			defer f.mu.Unlock()
			f.extending = false
			if err != nil {
				f.log.Error("cannot extend the resource versions' lease; will retry", "error", err)
				return
			}
			f.limit = max(f.limit, next)
		}()
	}
	return f.rv
}

// startHistory begins the ring after the versions handed out so far (to the
// tasks loaded at the start).
func (f *feed) startHistory() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.floor = f.rv
}

// publishLocked appends a change, whose resource version assign has just
// handed out (transition does both under the manager's lock, which orders
// the changes and keeps the versions in the ring contiguous).
func (f *feed) publishLocked(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == len(f.ring) {
		f.floor = f.ring[f.head].Task.ResourceVersion
		f.ring[f.head] = ev
		f.head = (f.head + 1) % len(f.ring)
	} else {
		f.ring[(f.head+f.n)%len(f.ring)] = ev
		f.n++
	}
	close(f.notify)
	f.notify = make(chan struct{})
}

// current returns the last resource version handed out.
func (f *feed) current() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rv
}

// Watch is one reader of the change feed.
type Watch struct {
	f *feed
	// after is the resource version of the last change read.
	after uint64
	// Snapshot, for a watch begun without a resource version, is every
	// task at the start (sorted by name); the changes follow it.
	Snapshot []Task
}

// ResourceVersion is the resource version of the last change read (for a
// new watch, of its snapshot): every change up to it has been read.
func (w *Watch) ResourceVersion() uint64 { return w.after }

// Watch begins a watch: after a resource version (resuming), or with a
// snapshot of every task when from is nil. It returns ErrGone when the
// history after from is no longer kept.
func (c *Manager) Watch(from *uint64) (*Watch, error) {
	f := c.feed
	if from == nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		w := &Watch{f: f, Snapshot: make([]Task, 0, len(c.tasks))}
		for _, e := range c.tasks {
			w.Snapshot = append(w.Snapshot, e.view())
		}
		sort.Slice(w.Snapshot, func(i, j int) bool { return w.Snapshot[i].Name < w.Snapshot[j].Name })
		w.after = f.current()
		return w, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if *from < f.floor || *from > f.rv {
		return nil, fmt.Errorf("resource version %d is not in the history the executor keeps (%d to %d): list again: %w", *from, f.floor, f.rv, ErrGone)
	}
	return &Watch{f: f, after: *from}, nil
}

// Next returns up to max changes after the last one read, waiting for one
// until ctx ends (then it returns none and ctx's error). It returns
// ErrFellBehind once the changes after the last one read are no longer
// kept.
func (w *Watch) Next(ctx context.Context, max int) ([]Event, error) {
	f := w.f
	for {
		f.mu.Lock()
		if w.after < f.floor {
			f.mu.Unlock()
			return nil, fmt.Errorf("changes after resource version %d are no longer kept: %w", w.after, ErrFellBehind)
		}
		// The ring's versions are contiguous after the floor. (The newest
		// version handed out may not be in it yet: transition hands it out
		// just before it publishes.)
		if skip := int(w.after - f.floor); skip < f.n {
			take := min(max, f.n-skip)
			out := make([]Event, take)
			for i := range out {
				out[i] = f.ring[(f.head+skip+i)%len(f.ring)]
			}
			w.after = out[take-1].Task.ResourceVersion
			f.mu.Unlock()
			return out, nil
		}
		note := f.notify
		f.mu.Unlock()
		select {
		case <-note:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}
