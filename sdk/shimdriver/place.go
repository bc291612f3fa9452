package shimdriver

import (
	"context"
	"fmt"
	"os"

	"github.com/opensandbox/task-executor/sdk"
)

// Placer decides where a task's process runs. The process runtime places
// tasks on the host; a sidecar runtime places them in another container's
// namespaces.
type Placer interface {
	// Init configures the placer with the host's configuration.
	Init(cfg sdk.Config) error
	// Place returns where to run task now. An error wrapping a *NotReady
	// means the task cannot start yet: it waits, showing the reason, and
	// Place is asked again until it can.
	Place(ctx context.Context, task sdk.Task) (Place, error)
}

// Place is where a task's process runs.
type Place struct {
	// Env is the environment the task starts from; its own env goes on top.
	Env []string
	// Dir is the working directory of a task that names none.
	Dir string
	// Namespaces, when set, is a pidfd of the process whose mount, UTS,
	// IPC, network and PID namespaces the task runs in (see shim.Spec). The
	// driver closes it once the task has started.
	Namespaces *os.File
}

// NotReady says why a task cannot start yet, as Kubernetes says why a
// container waits.
type NotReady struct {
	Reason, Message string
}

func (e *NotReady) Error() string { return fmt.Sprintf("%s: %s", e.Reason, e.Message) }
