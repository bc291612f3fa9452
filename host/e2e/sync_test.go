package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
)

func TestSetTasks(t *testing.T) {
	h := startHost(t)
	keep := processTask("keep", "sleep", "30")
	gone := processTask("gone", "sleep", "30")
	var got []api.Task
	if err := json.Unmarshal(h.mustDo(200, "POST", "/setTasks", []any{keep, gone}), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "gone" || got[1].Name != "keep" {
		t.Fatalf("setTasks answered %+v, want gone and keep", got)
	}
	eventually(t, 10*time.Second, func() bool {
		k, _ := h.get("keep")
		g, _ := h.get("gone")
		return k.Status.State.Running != nil && g.Status.State.Running != nil
	}, func() string { return "the tasks never ran" })
	before := h.shimState("keep")

	// A different spec for an existing name fails the whole request and
	// changes nothing: "gone" must survive too.
	changed := processTask("keep", "sleep", "31")
	code, body := h.do("POST", "/setTasks", []any{changed, processTask("new", "true")})
	if code != 409 {
		t.Fatalf("a changed spec got %d %s, want 409", code, body)
	}
	if _, ok := h.get("new"); ok {
		t.Fatal("a rejected setTasks created a task")
	}
	if g, _ := h.get("gone"); g.DeletionTimestamp != nil {
		t.Fatal("a rejected setTasks deleted a task")
	}

	// The same spec leaves the task alone; a missing name is deleted.
	h.mustDo(200, "POST", "/setTasks", []any{keep, processTask("new", "true")})
	after := h.shimState("keep")
	if after.PID != before.PID {
		t.Fatalf("an unchanged task was restarted: pid %d → %d", before.PID, after.PID)
	}
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("gone"); return !ok },
		func() string { return "the task missing from setTasks was not deleted" })
	h.waitTerminated("new", 10*time.Second)
	names := []string{}
	for _, tk := range h.list() {
		names = append(names, tk.Name)
	}
	if fmt.Sprint(names) != "[keep new]" {
		t.Fatalf("getTasks lists %v, want [keep new] (sorted by name)", names)
	}
}

// TestManyTasksAtOnce: 500 tasks of one setTasks all run at the same time.
// Each task waits, then checks that all 500 have started: run one after
// another (or a few at a time) they would fail.
func TestManyTasksAtOnce(t *testing.T) {
	const n = 500
	h := startHost(t)
	marks := t.TempDir()
	tasks := make([]any, n)
	for i := range tasks {
		tasks[i] = shTask(fmt.Sprintf("many-%03d", i), fmt.Sprintf(
			`: > %[1]s/%[2]d; i=0; while [ "$(ls %[1]s | wc -l)" -lt %[3]d ]; do i=$((i+1)); [ $i -gt 600 ] && exit 1; sleep 0.5; done`,
			marks, i, n))
	}
	h.mustDo(200, "POST", "/setTasks", tasks)
	maxRunning := 0
	eventually(t, 3*time.Minute, func() bool {
		running, done := 0, 0
		for _, tk := range h.list() {
			switch s := tk.Status.State; {
			case s.Running != nil:
				running++
			case s.Terminated != nil:
				if s.Terminated.Reason != "Succeeded" {
					t.Fatalf("task %s: %+v", tk.Name, s.Terminated)
				}
				done++
			}
		}
		maxRunning = max(maxRunning, running)
		return done == n
	}, func() string { return "not all tasks succeeded" })
	t.Logf("at most %d of %d tasks were seen running at once", maxRunning, n)
	entries, _ := os.ReadDir(marks)
	if len(entries) != n {
		t.Fatalf("%d tasks ran, want %d", len(entries), n)
	}
}

func TestMaxConcurrentTasks(t *testing.T) {
	h := startHost(t, "--max-concurrent-tasks", "2")
	order := filepath.Join(t.TempDir(), "order")
	var tasks []any
	for i := 0; i < 6; i++ {
		tasks = append(tasks, shTask(fmt.Sprintf("capped-%d", i), fmt.Sprintf("echo %d >> %s; sleep 0.3", i, order)))
	}
	// One by one, so creation order is well defined.
	for _, tk := range tasks {
		h.mustDo(201, "POST", "/tasks", tk)
	}
	sawQueued := false
	eventually(t, time.Minute, func() bool {
		running, done := 0, 0
		for _, tk := range h.list() {
			s := tk.Status.State
			switch {
			case s.Running != nil:
				running++
			case s.Terminated != nil:
				done++
			case s.Waiting != nil && s.Waiting.Reason == "Queued":
				sawQueued = true
			}
		}
		if running > 2 {
			t.Fatalf("%d tasks running with --max-concurrent-tasks 2", running)
		}
		return done == len(tasks)
	}, func() string { return "not all capped tasks finished" })
	if !sawQueued {
		t.Error("no task was ever shown as Queued")
	}
	b, err := os.ReadFile(order)
	if err != nil {
		t.Fatal(err)
	}
	var started []int
	for _, f := range strings.Fields(string(b)) {
		i, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		started = append(started, i)
	}
	if len(started) != len(tasks) {
		t.Fatalf("started %v, want each of the %d tasks once", started, len(tasks))
	}
	// Two slots: a task may overtake the one just before it, never more.
	for i, v := range started {
		if v < i-1 || v > i+1 {
			t.Fatalf("tasks started in order %v, not in creation order", started)
		}
	}
}
