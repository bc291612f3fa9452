package client

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// Task is a task of the HTTP API. The host answers each task in the format
// it was created in: the nested one (Spec and Status) or, for a process,
// the compatibility format (Process and ProcessStatus, with Status). The
// client fills in the other: a task read has Spec and Status, and, for a
// process task, Process and ProcessStatus repeating Spec.Process and
// Status.State, whatever format it came in.
//
// To create a task, set Spec (the nested format) or, for a process, only
// Process (the compatibility format). A task read from the host may be sent
// back as it is: Create and SetTasks then send its Spec alone, and the host
// ignores the status fields and the resource version.
type Task struct {
	// Name is a DNS-1123 subdomain, unique among the host's tasks.
	Name string `json:"name"`
	// ResourceVersion is the version of the task's last change, set by the
	// host. Versions are opaque: compare them for equality only (a task
	// whose version is the same has not changed). Create and SetTasks do
	// not send it.
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// DeletionTimestamp is set once the task is being deleted: it is still
	// being stopped, or its directory removed.
	DeletionTimestamp *metav1.Time `json:"deletionTimestamp,omitempty"`
	// Spec says what to run.
	Spec sdk.TaskSpec `json:"spec"`
	// Status is the task's state as the host last saw it.
	Status TaskStatus `json:"status"`
	// Process is the compatibility format's spec of a process task.
	Process *sdk.ProcessSpec `json:"process,omitempty"`
	// ProcessStatus is the compatibility format's state of a process task,
	// the same as Status.State.
	ProcessStatus *corev1.ContainerState `json:"processStatus,omitempty"`
}

// TaskStatus is a task's status.
type TaskStatus struct {
	// State is in the shape of Kubernetes' ContainerState: exactly one of
	// Waiting, Running and Terminated is set.
	State corev1.ContainerState `json:"state"`
	// Message, when set, says what the state does not: that a setTasks
	// listed the task with another spec than it runs with.
	Message string `json:"message,omitempty"`
}

// Terminated reports whether the task has terminated; a terminated task
// never changes state again.
func (t Task) Terminated() bool { return t.Status.State.Terminated != nil }

// taskIn is a task as the client sends it: in one format only, as the host
// refuses a task whose two formats disagree.
type taskIn struct {
	Name    string           `json:"name"`
	Spec    *sdk.TaskSpec    `json:"spec,omitempty"`
	Process *sdk.ProcessSpec `json:"process,omitempty"`
}

// UnmarshalJSON reads a task in either format and fills in the other.
func (t *Task) UnmarshalJSON(b []byte) error {
	type plain Task // without this method
	var p plain
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	*t = Task(p)
	if t.Spec.Process == nil && t.Spec.Container == nil && t.Process != nil {
		t.Spec.Process = t.Process
	}
	if t.Spec.Process != nil {
		if t.Process == nil {
			t.Process = t.Spec.Process
		}
		if t.ProcessStatus == nil {
			state := t.Status.State
			t.ProcessStatus = &state
		}
	}
	return nil
}

func toWire(t Task) taskIn {
	if t.Process != nil && isZero(t.Spec) {
		return taskIn{Name: t.Name, Process: t.Process}
	}
	spec := t.Spec
	return taskIn{Name: t.Name, Spec: &spec}
}

func isZero(s sdk.TaskSpec) bool {
	return s.Runtime == "" && s.Process == nil && s.Container == nil && len(s.Volumes) == 0 && s.TimeoutSeconds == nil
}

// LogOptions select what Logs serves. The zero value serves all of the
// output there is now, stdout then stderr.
type LogOptions struct {
	// Stream is "stdout", "stderr" or "all"; empty means "all".
	Stream string
	// Follow keeps the answer open while the task runs; it ends once the
	// task has terminated and its output is drained.
	Follow bool
	// TailLines, when set, serves only the last that many lines.
	TailLines *int64
	// LimitBytes, when set, caps the bytes served (possibly mid-line).
	LimitBytes *int64
}

// apiErrorBody is the body of the host's error answers.
type apiErrorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}
