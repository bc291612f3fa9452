package api

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

func watchedTask(name string, rv uint64, state corev1.ContainerState) tasks.Task {
	return tasks.Task{
		Name:            name,
		Spec:            sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sh", "-c"}, Args: []string{"echo hello; exit 3"}}},
		State:           state,
		ResourceVersion: rv,
	}
}

func TestEventLines(t *testing.T) {
	now := time.Now()
	var c eventLines
	running := watchedTask("a", 7, sdk.Running(now))
	first := c.line(tasks.Modified, running)
	tests := []struct {
		name   string
		typ    tasks.EventType
		task   tasks.Task
		shared bool // the very line first got
	}{
		{"the same version and type: the same line", tasks.Modified, running, true},
		{"the same version in a snapshot (ADDED)", tasks.Added, running, false},
		{"a later version", tasks.Modified, watchedTask("a", 8, sdk.Terminated(3, 0, "", "", now, now)), false},
		{"a version that falls on the same slot", tasks.Modified, watchedTask("b", 7+eventLineSlots, sdk.Running(now)), false},
		{"no version", tasks.Modified, watchedTask("a", 0, sdk.Running(now)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := c.line(tc.typ, tc.task)
			if want := encodeEvent(string(tc.typ), toAPI(tc.task)); !bytes.Equal(got, want) {
				t.Fatalf("got %s, want %s", got, want)
			}
			if same := &got[0] == &first[0]; same != tc.shared {
				t.Fatalf("shares the first line: %v, want %v", same, tc.shared)
			}
		})
	}
}

// BenchmarkWatchEncode: what writing one event to 10 watches costs in
// encoding, each encoding it (per-watch) or the first one for all (shared).
func BenchmarkWatchEncode(b *testing.B) {
	const watchers = 10
	now := time.Now()
	for _, mode := range []string{"per-watch", "shared"} {
		b.Run(mode, func(b *testing.B) {
			var c eventLines
			for i := 0; i < b.N; i++ {
				t := watchedTask(fmt.Sprintf("task-%d", i), uint64(i+1), sdk.Terminated(3, 0, "", "", now, now))
				for w := 0; w < watchers; w++ {
					if mode == "shared" {
						_ = c.line(tasks.Modified, t)
					} else {
						_ = encodeEvent(string(tasks.Modified), toAPI(t))
					}
				}
			}
		})
	}
}
