package sdk

import (
	"context"
	"errors"
	"time"
)

// Runtime is what a runtime plugin implements. The host calls it from many
// goroutines at once; an implementation must be safe for concurrent use.
//
// Every method except Init may be called again after a transport error, so
// each must be idempotent.
type Runtime interface {
	// Init configures the runtime and returns what it is. It is called once,
	// before any other method.
	Init(ctx context.Context, cfg Config) (Info, error)

	// Validate checks a spec beyond the host's generic checks (for example
	// that every volume a container mounts exists). It returns an error
	// wrapping ErrInvalidSpec for a spec the runtime will never run; the host
	// answers the client's request with 400 and that message.
	Validate(ctx context.Context, spec TaskSpec) error

	// Start starts a task and returns its status. A task the runtime cannot
	// start (binary not found, ...) is not an error: Start returns a
	// terminated status with ReasonStartError, the way Kubernetes reports a
	// container that cannot start. Starting a task that is already started
	// returns its current status and starts nothing.
	Start(ctx context.Context, task Task) (TaskStatus, error)

	// Stop stops a task: SIGTERM (or the runtime's equivalent) to everything
	// the task runs, then a kill after grace. It returns once the task has
	// terminated, or with ctx's error. Stopping a terminated task is a no-op;
	// an unknown task gives ErrNotFound.
	Stop(ctx context.Context, name string, grace time.Duration) error

	// Remove releases everything the runtime holds for a terminated task. The
	// host removes the task's directory afterwards. An unknown task is not an
	// error.
	Remove(ctx context.Context, name string) error

	// Status returns a task's status, or ErrNotFound.
	Status(ctx context.Context, name string) (TaskStatus, error)

	// List returns the status of every task the runtime tracks.
	List(ctx context.Context) ([]TaskStatus, error)

	// Recover is called after the plugin or the host restarted, with every
	// task of this runtime that has not terminated as far as the host knows.
	// The runtime re-adopts those it has started (keeps watching them and
	// reports their true state, including the exit of a task that ended
	// while nobody watched) and returns their statuses. A task left out of
	// the result is one the runtime never started; the host starts it.
	Recover(ctx context.Context, tasks []Task) ([]TaskStatus, error)

	// Events returns a channel of the status changes the runtime observes
	// on its own (a task exiting, an image pull failing, ...); it is closed
	// when ctx ends. A status a call returns (Start, Recover) need not be
	// sent again. It must not drop the last change of a task; Publisher does
	// this for an implementation.
	Events(ctx context.Context) (<-chan TaskStatus, error)
}

// ErrNotFound is returned (wrapped) for a task the runtime does not know.
var ErrNotFound = errors.New("task not found")

// ErrInvalidSpec is wrapped by errors about specs a runtime will never run.
var ErrInvalidSpec = errors.New("invalid task spec")

// ErrUnavailable is wrapped by errors from a plugin that cannot be reached
// (it exited or is restarting).
var ErrUnavailable = errors.New("runtime unavailable")

// UsageReporter is a Runtime that can tell what its tasks use. It is
// optional: the host shows no usage for the tasks of a runtime that does not
// implement it (over gRPC, ErrUnsupported).
type UsageReporter interface {
	// Usage returns the usage of the named tasks; a task the runtime does
	// not know, or keeps no figures for, is left out.
	Usage(ctx context.Context, names []string) ([]TaskUsage, error)
}

// TaskUsage is what one task has used so far, as its cgroup counts it.
type TaskUsage struct {
	// Name is the task's name.
	Name string
	// CPUSeconds is the CPU time used, user and system.
	CPUSeconds float64
	// MemoryBytes is the memory in use now; MemoryPeakBytes the most ever
	// in use (0: the kernel does not say).
	MemoryBytes, MemoryPeakBytes int64
}

// ErrUnsupported is wrapped by the errors of an optional method the
// runtime does not implement.
var ErrUnsupported = errors.New("not supported by the runtime")
