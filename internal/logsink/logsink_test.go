package logsink

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// gatedWriter blocks every Write until open is closed, as a pipe nobody
// reads does once it is full; entered gets a value each time a Write
// starts, while its one slot is free.
type gatedWriter struct {
	open    chan struct{}
	entered chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.open
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *gatedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWriteNeverBlocksAndLossIsTold(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		lines int
	}{
		{"a queue smaller than the lines", 4096, 1000},
		{"a queue holding all but a few", 100 * 41, 105}, // lines of 41 bytes
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := &gatedWriter{open: make(chan struct{}), entered: make(chan struct{}, 1)}
			s := New(out, tc.max)
			s.OnDrop(func(n uint64) { fmt.Fprintf(s, "dropped %d\n", n) })
			// The first line goes to the output, which holds it: from
			// then on the queue alone takes lines.
			fmt.Fprintf(s, "line %04d %s\n", 0, strings.Repeat("x", 30))
			<-out.entered
			wrote := make(chan struct{})
			go func() {
				defer close(wrote)
				for i := 1; i < tc.lines; i++ {
					fmt.Fprintf(s, "line %04d %s\n", i, strings.Repeat("x", 30))
				}
			}()
			select {
			case <-wrote:
			case <-time.After(10 * time.Second):
				t.Fatal("Write blocked on an output that takes nothing")
			}
			if s.Dropped() == 0 {
				t.Fatalf("no line dropped: %d lines of 40 bytes fit in %d bytes?", tc.lines, tc.max)
			}
			close(out.open)
			eventually(t, "the loss is told", func() bool { return strings.Contains(out.String(), "dropped ") })
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			var kept int
			var told uint64
			last := -1
			for _, l := range got {
				var i int
				if _, err := fmt.Sscanf(l, "dropped %d", &told); err == nil {
					continue
				}
				if _, err := fmt.Sscanf(l, "line %d", &i); err != nil {
					t.Fatalf("unexpected line %q", l)
				}
				if i <= last {
					t.Fatalf("line %d after line %d: out of order", i, last)
				}
				last = i
				kept++
			}
			if uint64(kept)+told != uint64(tc.lines) || told != s.Dropped() {
				t.Fatalf("%d lines kept and %d told dropped (%d counted), of %d written", kept, told, s.Dropped(), tc.lines)
			}
			if !strings.HasSuffix(out.String(), fmt.Sprintf("dropped %d\n", told)) {
				t.Fatalf("the loss is not told after the lines before it:\n%s", out.String())
			}
		})
	}
}

func TestFlush(t *testing.T) {
	t.Run("writes what is queued, then drops", func(t *testing.T) {
		var out bytes.Buffer
		s := New(&out, 0)
		for i := 0; i < 100; i++ {
			fmt.Fprintf(s, "line %d\n", i)
		}
		s.Flush(10 * time.Second)
		if n := strings.Count(out.String(), "\n"); n != 100 {
			t.Fatalf("%d lines out after Flush, want 100", n)
		}
		fmt.Fprintln(s, "after")
		if strings.Contains(out.String(), "after") || s.Dropped() != 1 {
			t.Fatalf("a line written after Flush went out, or was not counted (%d dropped)", s.Dropped())
		}
	})
	t.Run("gives up on a stuck output", func(t *testing.T) {
		out := &gatedWriter{open: make(chan struct{})}
		defer close(out.open)
		s := New(out, 0)
		fmt.Fprintln(s, "stuck")
		began := time.Now()
		s.Flush(50 * time.Millisecond)
		if time.Since(began) > 5*time.Second {
			t.Fatal("Flush did not give up on an output that takes nothing")
		}
	})
}
