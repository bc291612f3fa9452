package sdk

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// st builds a status whose Waiting.Reason carries a version, so a test can
// tell which publication of a task it received.
func st(name string, version int) TaskStatus {
	return TaskStatus{Name: name, State: Waiting(fmt.Sprint(version), "")}
}

func version(s TaskStatus) string {
	if s.State.Waiting == nil {
		return "<not waiting>"
	}
	return s.State.Waiting.Reason
}

func describe(ss []TaskStatus) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.Name + "@" + version(s)
	}
	return out
}

// receiveN reads exactly n statuses from ch, failing if the channel closes
// first.
func receiveN(t *testing.T, ch <-chan TaskStatus, n int) []TaskStatus {
	t.Helper()
	var got []TaskStatus
	for len(got) < n {
		s, ok := <-ch
		if !ok {
			t.Fatalf("channel closed after %d of %d statuses: %v", len(got), n, describe(got))
		}
		got = append(got, s)
	}
	return got
}

// assertNothingPending fails if ch holds anything more. Inside a synctest
// bubble, synctest.Wait first lets the subscriber's goroutine run until it
// is durably blocked, so an empty channel then really means nothing is
// queued.
func assertNothingPending(t *testing.T, ch <-chan TaskStatus) {
	t.Helper()
	synctest.Wait()
	select {
	case s, ok := <-ch:
		if ok {
			t.Fatalf("unexpected extra status %s@%s", s.Name, version(s))
		}
		t.Fatalf("channel closed unexpectedly")
	default:
	}
}

func equalSeq(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// blockOnSentinel publishes a status and waits until the subscriber's
// goroutine has taken it and blocked handing it over. Everything published
// afterwards is then queued, not in flight, which makes the coalesced
// sequence deterministic.
func blockOnSentinel(p *Publisher) TaskStatus {
	s := st("sentinel", 0)
	p.Publish(s)
	synctest.Wait()
	return s
}

func TestPublisherFastReaderGetsEveryChangeInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch := p.Subscribe(ctx)

		// A reader that keeps up sees every change, not just the latest one.
		want := []TaskStatus{st("a", 1), st("b", 1), st("a", 2), st("a", 3), st("b", 2)}
		for _, s := range want {
			p.Publish(s)
			got := receiveN(t, ch, 1)[0]
			if got.Name != s.Name || version(got) != version(s) {
				t.Fatalf("got %s@%s, want %s@%s", got.Name, version(got), s.Name, version(s))
			}
		}
		assertNothingPending(t, ch)
	})
}

func TestPublisherCoalescesForSlowReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch := p.Subscribe(ctx)
		sentinel := blockOnSentinel(&p)

		// Tasks first change in the order b, a, c; each is then updated again
		// while the reader is not reading.
		for _, s := range []TaskStatus{
			st("b", 1), st("a", 1), st("b", 2), st("c", 1), st("a", 2), st("b", 3), st("a", 3),
		} {
			p.Publish(s)
		}

		got := describe(receiveN(t, ch, 4))
		want := []string{describe([]TaskStatus{sentinel})[0], "b@3", "a@3", "c@1"}
		if !equalSeq(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		assertNothingPending(t, ch)
	})
}

// A task that changes again after the reader has taken its previous status
// is queued anew, behind the tasks that are still waiting: the order is that
// of the first change since the last delivery.
func TestPublisherRequeuesTaskAfterDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch := p.Subscribe(ctx)
		blockOnSentinel(&p)

		p.Publish(st("a", 1))
		p.Publish(st("b", 1))
		receiveN(t, ch, 1) // the sentinel
		// The goroutine now takes a@1 and blocks handing it over.
		synctest.Wait()
		p.Publish(st("a", 2))
		p.Publish(st("b", 2))

		got := describe(receiveN(t, ch, 3))
		want := []string{"a@1", "b@2", "a@2"}
		if !equalSeq(got, want) {
			t.Fatalf("got %v, want %v", got, want)
		}
		assertNothingPending(t, ch)
	})
}

// The backlog of a subscriber that does not read is bounded by the number
// of tasks, however many changes there are.
func TestPublisherBacklogBoundedByTasks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		ch := p.Subscribe(ctx)
		blockOnSentinel(&p)

		const tasks, updates = 50, 200
		for v := 1; v <= updates; v++ {
			for i := range tasks {
				p.Publish(st(fmt.Sprintf("task-%02d", i), v))
			}
		}
		got := receiveN(t, ch, 1+tasks)[1:]
		for i, s := range got {
			if want := fmt.Sprintf("task-%02d", i); s.Name != want || version(s) != fmt.Sprint(updates) {
				t.Fatalf("status %d is %s@%s, want %s@%d", i, s.Name, version(s), want, updates)
			}
		}
		assertNothingPending(t, ch)
	})
}

// Real time, not a bubble: a Publish that blocked would hang the test, which
// the deadline turns into a failure.
func TestPublishNeverBlocks(t *testing.T) {
	cases := []struct {
		name  string
		setup func(p *Publisher, ctx context.Context)
	}{
		{"no subscriber", func(*Publisher, context.Context) {}},
		{"subscriber that never reads", func(p *Publisher, ctx context.Context) { p.Subscribe(ctx) }},
		{"several subscribers that never read", func(p *Publisher, ctx context.Context) {
			for range 3 {
				p.Subscribe(ctx)
			}
		}},
		{"subscriber whose context ended", func(p *Publisher, _ context.Context) {
			ctx, cancel := context.WithCancel(context.Background())
			ch := p.Subscribe(ctx)
			cancel()
			for range ch {
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			var p Publisher
			tc.setup(&p, ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := range 20000 {
					p.Publish(st(fmt.Sprint("t", i%100), i))
				}
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Publish blocked")
			}
		})
	}
}

func TestPublisherZeroValueUsable(t *testing.T) {
	var p Publisher
	p.Publish(st("before-any-subscriber", 1))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ch := p.Subscribe(ctx)
	p.Publish(st("x", 1))
	select {
	case s, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		if s.Name != "x" {
			t.Fatalf("got %s, want x (a status published before Subscribe must not be delivered)", s.Name)
		}
	case <-ctx.Done():
		t.Fatal("nothing delivered")
	}
}

func TestPublisherMultipleSubscribersEachGetEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		subs := []<-chan TaskStatus{p.Subscribe(ctx), p.Subscribe(ctx), p.Subscribe(ctx)}

		seq := []TaskStatus{st("a", 1), st("b", 1), st("a", 2), st("c", 1)}
		for _, s := range seq {
			p.Publish(s)
			for i, ch := range subs {
				got := receiveN(t, ch, 1)[0]
				if got.Name != s.Name || version(got) != version(s) {
					t.Fatalf("subscriber %d got %s@%s, want %s@%s", i, got.Name, version(got), s.Name, version(s))
				}
			}
		}
		for _, ch := range subs {
			assertNothingPending(t, ch)
		}
	})
}

// One subscriber that lags must neither hold back nor thin out what another
// subscriber receives.
func TestPublisherSlowSubscriberDoesNotAffectOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		slow := p.Subscribe(ctx)
		fast := p.Subscribe(ctx)
		p.Publish(st("sentinel", 0))
		receiveN(t, fast, 1)
		synctest.Wait() // slow is now blocked handing over the sentinel

		for v := 1; v <= 5; v++ {
			p.Publish(st("a", v))
			if got := receiveN(t, fast, 1)[0]; version(got) != fmt.Sprint(v) {
				t.Fatalf("fast subscriber got a@%s, want a@%d", version(got), v)
			}
		}
		got := describe(receiveN(t, slow, 2))
		if want := []string{"sentinel@0", "a@5"}; !equalSeq(got, want) {
			t.Fatalf("slow subscriber got %v, want %v", got, want)
		}
		assertNothingPending(t, slow)
		assertNothingPending(t, fast)
	})
}

func TestPublisherConcurrentPublishersKeepLatest(t *testing.T) {
	var p Publisher
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch := p.Subscribe(ctx)

	const writers, updates = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for v := 1; v <= updates; v++ {
				p.Publish(st(fmt.Sprint("w", w), v))
			}
		})
	}
	// Read concurrently with the writers: each task's versions must arrive
	// increasing, ending with the last one.
	last := map[string]int{}
	deadline := time.After(20 * time.Second)
	for len(last) < writers || !allAt(last, updates) {
		select {
		case s := <-ch:
			v, err := strconv.Atoi(version(s))
			if err != nil {
				t.Fatalf("status %s has no version: %v", s.Name, err)
			}
			if v <= last[s.Name] {
				t.Fatalf("%s went from version %d back to %d", s.Name, last[s.Name], v)
			}
			last[s.Name] = v
		case <-deadline:
			t.Fatalf("latest versions not all delivered: %v", last)
		}
	}
	wg.Wait()
}

func allAt(m map[string]int, v int) bool {
	for _, got := range m {
		if got != v {
			return false
		}
	}
	return true
}

func TestPublisherChannelClosesWhenContextEnds(t *testing.T) {
	cases := []struct {
		name    string
		publish int // statuses queued, and never read, before the context ends
	}{
		{"idle", 0},
		{"blocked handing over a status", 1},
		{"with a backlog", 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var p Publisher
				ctx, cancel := context.WithCancel(t.Context())
				ch := p.Subscribe(ctx)
				for i := range tc.publish {
					p.Publish(st(fmt.Sprint("t", i), 1))
				}
				synctest.Wait()
				cancel()
				synctest.Wait()
				// The goroutine has returned by now: the channel must be
				// closed with nothing in it (it is unbuffered).
				select {
				case s, ok := <-ch:
					if ok {
						t.Fatalf("got %s after the context ended", s.Name)
					}
				default:
					t.Fatal("channel still open after the context ended")
				}
				// The subscriber must be forgotten, or every later Publish
				// would keep queueing for a reader that is gone.
				p.mu.Lock()
				n := len(p.subs)
				p.mu.Unlock()
				if n != 0 {
					t.Fatalf("%d subscribers still registered after their context ended", n)
				}
			})
		})
	}
}

func TestPublisherCancelOneSubscriberKeepsOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var p Publisher
		ctx1, cancel1 := context.WithCancel(t.Context())
		ctx2, cancel2 := context.WithCancel(t.Context())
		defer cancel2()
		ch1 := p.Subscribe(ctx1)
		ch2 := p.Subscribe(ctx2)
		cancel1()
		synctest.Wait()
		if _, ok := <-ch1; ok {
			t.Fatal("cancelled subscriber's channel is still open")
		}
		p.Publish(st("a", 1))
		if got := receiveN(t, ch2, 1)[0]; got.Name != "a" {
			t.Fatalf("remaining subscriber got %s, want a", got.Name)
		}
	})
}
