package api

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// listOnly serves a fixed task list.
type listOnly struct{ tasks []tasks.Task }

func (l listOnly) Create(context.Context, tasks.NewTask) (tasks.Task, error) {
	return tasks.Task{}, nil
}
func (l listOnly) Delete(context.Context, string, *time.Duration) error { return nil }
func (l listOnly) Sync(context.Context, []tasks.NewTask) ([]tasks.Task, error) {
	return nil, nil
}
func (l listOnly) Get(string) (tasks.Task, bool) { return tasks.Task{}, false }
func (l listOnly) Await(string) (tasks.Task, <-chan struct{}, bool) {
	return tasks.Task{}, nil, false
}
func (l listOnly) Snapshot() ([]tasks.Task, uint64) { return l.List(), 0 }
func (l listOnly) Watch(*uint64) (*tasks.Watch, error) {
	return nil, fmt.Errorf("no watches here: %w", tasks.ErrUnavailable)
}
func (l listOnly) List() []tasks.Task { return l.tasks }

// BenchmarkListJSON: GET /getTasks of 10,000 tasks, most finished, encoded
// to JSON.
func BenchmarkListJSON(b *testing.B) {
	now := time.Now()
	ts := make([]tasks.Task, 10000)
	for i := range ts {
		ts[i] = tasks.Task{
			Name:  fmt.Sprintf("task-%05d", i),
			Spec:  sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sh", "-c"}, Args: []string{"echo hello; exit 3"}}},
			State: sdk.Terminated(3, 0, "", "", now, now),
		}
	}
	h := Handler(listOnly{ts}, hclog.NewNullLogger())
	req := httptest.NewRequest(http.MethodGet, "/getTasks", nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
		b.SetBytes(int64(w.Body.Len()))
	}
}
