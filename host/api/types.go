package api

import (
	"encoding/json"

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
}

// TaskStatus is a task's status: its state in the shape of Kubernetes'
// ContainerState.
type TaskStatus struct {
	State corev1.ContainerState `json:"state"`
}

// taskIn is a task as a client sends it. Clients may send back a task as
// they read it, so status and deletionTimestamp are accepted and ignored,
// as the Kubernetes API server ignores status on create.
type taskIn struct {
	Name              string          `json:"name"`
	Spec              *sdk.TaskSpec   `json:"spec"`
	Status            json.RawMessage `json:"status,omitempty"`
	DeletionTimestamp json.RawMessage `json:"deletionTimestamp,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func toAPI(t reconcile.Task) Task {
	out := Task{Name: t.Name, Spec: t.Spec, Status: TaskStatus{State: t.State}}
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
