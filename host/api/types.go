package api

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/client"
)

// Task is the task object of the HTTP API as the Go client reads it.
type Task = client.Task

// taskOut is a task as the host answers it: in the format it was created
// in, so that no answer carries a spec twice. Nested: name, spec, status.
// Compatibility format (what the OpenSandbox controller's client sends and
// reads): name, process, processStatus, and status. A task recorded by an
// older version, which answered both, still answers both.
type taskOut struct {
	Name              string                 `json:"name"`
	DeletionTimestamp *metav1.Time           `json:"deletionTimestamp,omitempty"`
	Spec              *sdk.TaskSpec          `json:"spec,omitempty"`
	Status            TaskStatus             `json:"status"`
	Process           *sdk.ProcessSpec       `json:"process,omitempty"`
	ProcessStatus     *corev1.ContainerState `json:"processStatus,omitempty"`
	// RuntimeOptions are spec.runtimeOptions in the compatibility format.
	RuntimeOptions map[string]string `json:"runtimeOptions,omitempty"`
	// ResourceVersion is the resource version of the task's last change,
	// a decimal number in a string, as Kubernetes' (see watch.go).
	ResourceVersion string `json:"resourceVersion,omitempty"`
}

// TaskStatus is a task's status: its state in the shape of Kubernetes'
// ContainerState.
type TaskStatus = client.TaskStatus

// taskIn is a task as a client sends it: nested ({"name", "spec"}) or in
// the compatibility format ({"name", "process"}). Clients may send back a
// task as they read it, so status, processStatus and deletionTimestamp are
// accepted and ignored, as the Kubernetes API server ignores status on
// create. A resourceVersion sent back is ignored likewise.
type taskIn struct {
	Name    string           `json:"name"`
	Spec    *sdk.TaskSpec    `json:"spec"`
	Process *sdk.ProcessSpec `json:"process,omitempty"`
	// RuntimeOptions go beside process in the compatibility format, which
	// has no spec to hold them.
	RuntimeOptions    map[string]string `json:"runtimeOptions,omitempty"`
	Status            json.RawMessage   `json:"status,omitempty"`
	ProcessStatus     json.RawMessage   `json:"processStatus,omitempty"`
	DeletionTimestamp json.RawMessage   `json:"deletionTimestamp,omitempty"`
	ResourceVersion   json.RawMessage   `json:"resourceVersion,omitempty"`
	// format is the format it came in (store.Format*; "": both, as a task
	// read from an older version carries them).
	format string
}

// resolve turns a task in the compatibility format into the nested one.
// A task with both spec and a flat process is ambiguous unless the two say
// the same, as in a task sent back as it was read, which carries both.
func (t *taskIn) resolve() error {
	switch {
	case t.Process == nil:
		if t.RuntimeOptions != nil {
			return fmt.Errorf("task %q: runtimeOptions beside spec: in the nested format they are spec.runtimeOptions (beside process, in the compatibility format)", t.Name)
		}
		t.format = store.FormatNested
		return nil
	case t.Spec == nil:
		t.Spec = &sdk.TaskSpec{Process: t.Process, RuntimeOptions: t.RuntimeOptions}
		t.format = store.FormatCompat
		return nil
	case t.Spec.Kind() == sdk.KindProcess && reflect.DeepEqual(*t.Spec.Process, *t.Process) && maps.Equal(t.Spec.RuntimeOptions, t.RuntimeOptions):
		return nil
	}
	return fmt.Errorf("task %q: set either spec (the nested format) or process (the compatibility format), not both", t.Name)
}

// Error is the body of every error response.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func toAPI(t tasks.Task) taskOut {
	out := taskOut{Name: t.Name, Status: TaskStatus{State: t.State, Message: t.Message}}
	if t.ResourceVersion != 0 {
		out.ResourceVersion = strconv.FormatUint(t.ResourceVersion, 10)
	}
	if t.Format != store.FormatCompat || t.Spec.Kind() != sdk.KindProcess {
		out.Spec = &t.Spec
	}
	if t.Format != store.FormatNested && t.Spec.Kind() == sdk.KindProcess {
		state := t.State
		out.Process, out.ProcessStatus, out.RuntimeOptions = t.Spec.Process, &state, t.Spec.RuntimeOptions
	}
	if t.DeletionTimestamp != nil {
		ts := metav1.NewTime(*t.DeletionTimestamp)
		out.DeletionTimestamp = &ts
	}
	return out
}
