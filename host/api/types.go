package api

import (
	"encoding/json"
	"fmt"
	"reflect"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opensandbox/task-executor/host/reconcile"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/client"
)

// Task is the task object of the HTTP API. It is the Go client's type, so
// that what the host writes is what the client reads: every answer carries
// both formats (spec+status and, for a process task, the compatibility
// format's process+processStatus, which the OpenSandbox controller's client
// reads).
type Task = client.Task

// TaskStatus is a task's status: its state in the shape of Kubernetes'
// ContainerState.
type TaskStatus = client.TaskStatus

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
	out := Task{Name: t.Name, Spec: t.Spec, Status: TaskStatus{State: t.State, Message: t.Message}}
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
