package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// flatTask is a task as the OpenSandbox controller's client reads it: the
// compatibility format, which knows nothing of spec and status.
type flatTask struct {
	Name          string                 `json:"name"`
	Process       *sdk.ProcessSpec       `json:"process"`
	ProcessStatus *corev1.ContainerState `json:"processStatus"`
}

// checkForm fails unless the task object is in the format the task was
// created in, and in that one alone (no spec sent twice): a task created
// flat (every name here but those starting "nested") answers process,
// processStatus and status, the state in both; a nested one spec and
// status. It returns the task as the controller's client reads it, with
// ProcessStatus set from status.state for a nested one.
func checkForm(t *testing.T, where string, obj json.RawMessage) flatTask {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(obj, &m); err != nil {
		t.Fatalf("%s: %v: %s", where, err, obj)
	}
	var task struct {
		Name   string
		Spec   *struct{ Process json.RawMessage }
		Status struct{ State json.RawMessage }
	}
	if err := json.Unmarshal(obj, &task); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if task.Status.State == nil {
		t.Fatalf("%s: no status.state: %s", where, obj)
	}
	flat := !strings.HasPrefix(task.Name, "nested")
	switch {
	case flat && (task.Spec != nil || m["process"] == nil || !bytes.Equal(m["processStatus"], task.Status.State)):
		t.Fatalf("%s: want process, processStatus (the same as status.state) and no spec for a task created flat: %s", where, obj)
	case !flat && (task.Spec == nil || task.Spec.Process == nil || m["process"] != nil || m["processStatus"] != nil):
		t.Fatalf("%s: want spec.process and no process or processStatus for a task created nested: %s", where, obj)
	}
	var f flatTask
	if err := json.Unmarshal(obj, &f); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if !flat {
		if err := json.Unmarshal(task.Status.State, &f.ProcessStatus); err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
	return f
}

func checkListForms(t *testing.T, where string, body []byte) map[string]flatTask {
	t.Helper()
	var objs []json.RawMessage
	if err := json.Unmarshal(body, &objs); err != nil {
		t.Fatalf("%s: %v: %s", where, err, body)
	}
	out := map[string]flatTask{}
	for i, o := range objs {
		f := checkForm(t, fmt.Sprintf("%s [%d]", where, i), o)
		out[f.Name] = f
	}
	return out
}

func TestCompatFormat(t *testing.T) {
	h := startHost(t)

	// Created flat through POST /tasks.
	hello := `{"name": "flat-hello", "process": {"command": ["sh", "-c"], "args": ["echo \"$GREETING\" from $(pwd)"],
		"env": [{"name": "GREETING", "value": "hi"}], "workingDir": "/tmp", "timeoutSeconds": 60}}`
	timeout := `{"name": "flat-timeout", "process": {"command": ["sleep", "30"], "timeoutSeconds": 1}}`
	for _, body := range []string{hello, timeout} {
		f := checkForm(t, "POST /tasks", h.mustDo(201, "POST", "/tasks", body))
		// Just created: waiting, running, or (a quick task, whose create
		// took longer than its run) terminated; exactly one of them.
		st := f.ProcessStatus
		if n := btoi(st.Waiting != nil) + btoi(st.Running != nil) + btoi(st.Terminated != nil); n != 1 {
			t.Fatalf("a new task is %+v, want exactly one state", st)
		}
	}

	// POST /setTasks mixes both formats; the flat tasks already there are
	// unchanged and left alone.
	set := "[" + hello + "," + timeout + `,
		{"name": "flat-set", "process": {"command": ["sh", "-c", "exit 3"]}},
		{"name": "nested-set", "spec": {"process": {"command": ["true"]}}}]`
	got := checkListForms(t, "POST /setTasks", h.mustDo(200, "POST", "/setTasks", set))
	if len(got) != 4 {
		t.Fatalf("setTasks answered %v, want four tasks", got)
	}

	// Read back: GET /tasks/:name (as a long poll, until each ends) and
	// GET /getTasks.
	type end struct {
		reason string
		codes  []int32
	}
	want := map[string]end{
		"flat-hello":   {sdk.ReasonSucceeded, []int32{0}},
		"flat-set":     {sdk.ReasonFailed, []int32{3}},
		"nested-set":   {sdk.ReasonSucceeded, []int32{0}},
		"flat-timeout": {sdk.ReasonTaskTimeout, []int32{143, 137}},
	}
	ended := func(s *corev1.ContainerStateTerminated, e end) bool {
		return s != nil && s.Reason == e.reason && slices.Contains(e.codes, s.ExitCode)
	}
	for name, e := range want {
		var f flatTask
		eventually(t, 20*time.Second, func() bool {
			f = checkForm(t, "GET /tasks/"+name, h.mustDo(200, "GET", "/tasks/"+name+"?wait=10s", nil))
			return f.ProcessStatus.Terminated != nil
		}, func() string { return fmt.Sprintf("%s never terminated: %+v", name, f.ProcessStatus) })
		if !ended(f.ProcessStatus.Terminated, e) {
			t.Errorf("%s ended as %+v", name, f.ProcessStatus.Terminated)
		}
	}
	listed := checkListForms(t, "GET /getTasks", h.mustDo(200, "GET", "/getTasks", nil))
	for name, e := range want {
		if f, found := listed[name]; !found || !ended(f.ProcessStatus.Terminated, e) {
			t.Errorf("getTasks shows %s as %+v", name, f.ProcessStatus)
		}
	}
	if out := string(h.mustDo(200, "GET", "/tasks/flat-hello/logs", nil)); out != "hi from /tmp\n" {
		t.Errorf("flat-hello's output: %q", out)
	}

	// A task read back is in its own format; sent back as it is, it is
	// the same task, left alone.
	h.mustDo(200, "POST", "/setTasks", h.mustDo(200, "GET", "/getTasks", nil))
	if len(h.list()) != 4 {
		t.Fatalf("sending back the tasks as read changed them: %+v", h.list())
	}

	// Two formats that disagree are refused, and change nothing.
	both := `{"name": "both", "spec": {"process": {"command": ["true"]}}, "process": {"command": ["false"]}}`
	h.mustDo(400, "POST", "/tasks", both)
	h.mustDo(400, "POST", "/setTasks", "["+both+"]")
	h.mustDo(400, "POST", "/tasks", `{"name": "unknown", "process": {"command": ["true"], "timeout": 5}}`)
	if _, ok := h.get("both"); ok {
		t.Fatal("a refused task was created")
	}
	if len(h.list()) != 4 {
		t.Fatalf("a refused setTasks changed the tasks: %+v", h.list())
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
