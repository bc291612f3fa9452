package api

import (
	"encoding/json"
	"fmt"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opensandbox/task-executor/host/reconcile"
	"github.com/opensandbox/task-executor/sdk"
)

// Task is the task object of the HTTP API.
type Task struct {
	Name              string       `json:"name"`
	DeletionTimestamp *metav1.Time `json:"deletionTimestamp,omitempty"`
	Spec              sdk.TaskSpec `json:"spec"`
	Status            TaskStatus   `json:"status"`
	// Process and ProcessStatus repeat a process task's spec.process and
	// status.state in the compatibility format, which the OpenSandbox
	// controller's client reads; every answer carries both forms so either
	// kind of client reads it unchanged.
	Process       *sdk.ProcessSpec       `json:"process,omitempty"`
	ProcessStatus *corev1.ContainerState `json:"processStatus,omitempty"`
}

// TaskStatus is a task's status: its state in the shape of Kubernetes'
// ContainerState.
type TaskStatus struct {
	State corev1.ContainerState `json:"state"`
}

// taskIn is a task as a client sends it: nested ({"name", "spec"}) or in
// the compatibility format ({"name", "process"}). Clients may send back a
// task as they read it, so status, processStatus and deletionTimestamp are
// accepted and ignored, as the Kubernetes API server ignores status on
// create.
type taskIn struct {
	Name              string           `json:"name"`
	Spec              *sdk.TaskSpec    `json:"spec"`
	Process           *sdk.ProcessSpec `json:"process,omitempty"`
	Status            json.RawMessage  `json:"status,omitempty"`
	ProcessStatus     json.RawMessage  `json:"processStatus,omitempty"`
	DeletionTimestamp json.RawMessage  `json:"deletionTimestamp,omitempty"`
}

// resolve turns a task in the compatibility format into the nested one.
// A task with both spec and a flat process is ambiguous unless the two say
// the same, as in a task sent back as it was read, which carries both.
func (t *taskIn) resolve() error {
	switch {
	case t.Process == nil:
		return nil
	case t.Spec == nil:
		t.Spec = &sdk.TaskSpec{Process: t.Process}
		return nil
	case t.Spec.Kind() == sdk.KindProcess && reflect.DeepEqual(*t.Spec.Process, *t.Process):
		return nil
	}
	return fmt.Errorf("task %q: set either spec (the nested format) or process (the compatibility format), not both", t.Name)
}

// Error is the body of every error response.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func toAPI(t reconcile.Task) Task {
	out := Task{Name: t.Name, Spec: t.Spec, Status: TaskStatus{State: t.State}}
	if t.Spec.Kind() == sdk.KindProcess {
		state := t.State
		out.Process, out.ProcessStatus = t.Spec.Process, &state
	}
	if t.DeletionTimestamp != nil {
		ts := metav1.NewTime(*t.DeletionTimestamp)
		out.DeletionTimestamp = &ts
	}
	return out
}

func listToAPI(ts []reconcile.Task) []Task {
	out := make([]Task, len(ts))
	for i, t := range ts {
		out[i] = toAPI(t)
	}
	return out
}
