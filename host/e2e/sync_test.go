package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/sdk"
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

	// A different spec for an existing name, as a controller resends its
	// whole list after its template changed: the task keeps running as it
	// was and says so; the rest of the list is applied (here: nothing
	// else), and sending it again changes nothing.
	changed := processTask("keep", "sleep", "31")
	first := h.mustDo(200, "POST", "/setTasks", []any{changed, gone})
	again := h.mustDo(200, "POST", "/setTasks", []any{changed, gone})
	k, _ := h.get("keep")
	if k.Spec.Process.Args != nil || k.Spec.Process.Command[1] != "30" || !strings.Contains(k.Status.Message, "another spec") ||
		k.Status.State.Running == nil || h.shimState("keep").PID != before.PID {
		t.Fatalf("the task listed with a changed spec: %+v %+v", k.Spec.Process, k.Status)
	}
	if !bytes.Equal(first, again) {
		t.Fatalf("sending the same list again changed the answer:\n%s\n%s", first, again)
	}

	// The same spec leaves the task alone, and clears the note; a missing
	// name is deleted.
	h.mustDo(200, "POST", "/setTasks", []any{keep, processTask("new", "true")})
	if k, _ := h.get("keep"); k.Status.Message != "" {
		t.Fatalf("the note stayed once the spec agreed: %q", k.Status.Message)
	}
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

// TestSetTasksNeverWedged: what a controller's template may carry never
// fails the whole list it resends on every reconcile: each odd task says
// what is wrong with it, on the task, and the others run.
func TestSetTasksNeverWedged(t *testing.T) {
	t.Setenv("POD_NAME", "sandbox-7")
	h := startHost(t)
	env := func(name string, src map[string]any) map[string]any {
		return map[string]any{"name": name, "valueFrom": src}
	}
	withEnv := func(name string, e map[string]any) map[string]any {
		return map[string]any{"name": name, "spec": map[string]any{"process": map[string]any{
			"command": []string{"sh", "-c", `echo "$V"`}, "env": []any{e}}}}
	}
	first := []any{
		processTask("valid", "true"),
		withEnv("pod-name", env("V", map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}})),
		withEnv("label", env("V", map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.labels['app']"}})),
		withEnv("secret", env("V", map[string]any{"secretKeyRef": map[string]any{"name": "s", "key": "k"}})),
		map[string]any{"name": "no-timeout", "process": map[string]any{"command": []string{"sh", "-c", "sleep 1.5; echo done"}, "timeoutSeconds": 0}},
		processTask("kept", "sleep", "30"),
	}
	h.mustDo(200, "POST", "/setTasks", first)
	eventually(t, 10*time.Second, func() bool { k, _ := h.get("kept"); return k.Status.State.Running != nil },
		func() string { return "kept never ran" })
	// The template changed for "kept": resent with another command.
	second := append(append([]any{}, first[:5]...), processTask("kept", "sleep", "31"))
	h.mustDo(200, "POST", "/setTasks", second)

	for name, want := range map[string]struct {
		reason, output, message string
	}{
		"valid":      {sdk.ReasonSucceeded, "", ""},
		"pod-name":   {sdk.ReasonSucceeded, "sandbox-7\n", ""},
		"label":      {sdk.ReasonStartError, "", "metadata.labels['app']"},
		"secret":     {sdk.ReasonStartError, "", "secretKeyRef s/k"},
		"no-timeout": {sdk.ReasonSucceeded, "done\n", ""},
	} {
		term := h.waitTerminated(name, 15*time.Second).Status.State.Terminated
		if term.Reason != want.reason || !strings.Contains(term.Message, want.message) {
			t.Errorf("%s: %+v, want %s saying %q", name, term, want.reason, want.message)
		}
		if want.output != "" {
			if out := string(h.mustDo(200, "GET", "/tasks/"+name+"/logs?stream=stdout", nil)); out != want.output {
				t.Errorf("%s printed %q, want %q", name, out, want.output)
			}
		}
	}
	if k, _ := h.get("kept"); k.Status.State.Running == nil || !strings.Contains(k.Status.Message, "another spec") {
		t.Errorf("kept: %+v, want running with a note of the other spec", k.Status)
	}
	// Once everything has settled, sending the list again changes nothing.
	a := h.mustDo(200, "POST", "/setTasks", second)
	b := h.mustDo(200, "POST", "/setTasks", second)
	if !bytes.Equal(a, b) {
		t.Fatalf("the same list sent twice answered differently:\n%s\n%s", a, b)
	}
	// A body of null (a nil slice, marshalled by Go) is the empty list.
	h.mustDo(200, "POST", "/setTasks", "null")
	eventually(t, 20*time.Second, func() bool { return len(h.list()) == 0 },
		func() string { return fmt.Sprintf("%d tasks left after setTasks null", len(h.list())) })
}
