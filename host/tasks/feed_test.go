package tasks

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// TestFeedNextBetweenAssignAndPublish: a reader that looks after a version
// is handed out but before its change is in the ring waits for the change
// (transition does the two in turn, and readers do not take its lock).
func TestFeedNextBetweenAssignAndPublish(t *testing.T) {
	f := newFeed(4, 1, 100, func(uint64) error { return nil }, hclog.NewNullLogger())
	f.startHistory()
	w := &Watch{f: f, after: f.current()}
	rv := f.assign()
	got := make(chan []Event, 1)
	go func() {
		evs, err := w.Next(context.Background(), 10)
		if err != nil {
			t.Error(err)
		}
		got <- evs
	}()
	select {
	case evs := <-got:
		t.Fatalf("Next answered %v before the change was published", evs)
	case <-time.After(50 * time.Millisecond):
	}
	f.publishLocked(Event{Type: Added, Task: Task{Name: "a", ResourceVersion: rv}})
	if evs := <-got; len(evs) != 1 || evs[0].Task.ResourceVersion != rv {
		t.Fatalf("Next answered %v, want the one change at %d", evs, rv)
	}
	// Once the ring has dropped a change the reader has not read, it is
	// told so.
	for i := 0; i < 5; i++ {
		f.publishLocked(Event{Type: Modified, Task: Task{Name: "a", ResourceVersion: f.assign()}})
	}
	if _, err := w.Next(context.Background(), 10); err == nil {
		t.Fatal("a reader a whole ring behind was not told it fell behind")
	}
}
