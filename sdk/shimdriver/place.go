package shimdriver

import (
	"context"
	"fmt"
	"os"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// Placer decides where a task's process runs. The process runtime places
// tasks on the host; a sidecar runtime places them in another container's
// namespaces.
type Placer interface {
	// Init configures the placer with the host's configuration.
	Init(cfg sdk.Config) error
	// Place returns where to run task now. An error wrapping a *NotReady
	// means the task cannot start yet: it waits, showing the reason, and
	// Place is asked again until it can. An error wrapping a *StartError
	// means it never will: the task ends as a StartError with that
	// message. Any other error fails the Start call (the host asks again).
	Place(ctx context.Context, task sdk.Task) (Place, error)
}

// Warner is a Placer that found, at Init, something wrong with where it
// places tasks; the driver's Init reports it in sdk.Info.Warnings.
type Warner interface {
	Warnings() []string
}

// CgroupFinder is a Placer that gives tasks cgroups of its choosing
// (Place.TaskCgroups) and can tell where they are now: the driver asks it
// for the cgroup of a task an earlier plugin process started (its usage,
// its removal).
type CgroupFinder interface {
	TaskCgroups(ctx context.Context) (*cgroups.Manager, error)
}

// Place is where a task's process runs.
type Place struct {
	// Env is the environment the task starts from; its own env goes on top.
	Env []string
	// Dir is the working directory of a task that names none.
	Dir string
	// Namespaces, when set, is a pidfd of the process whose mount, UTS,
	// IPC, network and PID namespaces the task runs in (see shim.Spec).
	Namespaces *os.File
	// NamespaceFlags, ContainerGone, Credentials, Cgroups and OOMCounter
	// are as in shim.Spec: which namespaces of Namespaces to enter, the
	// reason a task ends with when that process exits, who the task runs
	// as, the cgroups it runs in and the file that tells it was OOM-killed.
	NamespaceFlags int
	ContainerGone  string
	Credentials    *shim.Credentials
	Cgroups        []*os.File
	OOMCounter     *os.File
	// Wrap, when set, is a wrapper command the task's command runs through
	// (a sandbox: bwrap, firejail, "ip netns exec NAME"), Wrap[0] an
	// absolute path; see shim.Spec.Wrap. The shim still reports the task's
	// own command missing (127), not executable (126) or its working
	// directory bad (128), and a stop's SIGTERM goes to the task, not to
	// the wrapper.
	Wrap []string
	// TaskCgroups, when set, is where the task gets a cgroup of its own
	// (its resources' limits, usage, the kill of all it started), below
	// another container's for example; the shim joins it beside Cgroups,
	// which then name the hierarchies it has none in.
	TaskCgroups *cgroups.Manager
}

// Close closes the place's files. The driver calls it once the task has
// started or failed to.
func (p Place) Close() {
	for _, f := range append([]*os.File{p.Namespaces, p.OOMCounter}, p.Cgroups...) {
		if f != nil {
			f.Close()
		}
	}
}

// NotReady says why a task cannot start yet, as Kubernetes says why a
// container waits.
type NotReady struct {
	Reason, Message string
}

func (e *NotReady) Error() string { return fmt.Sprintf("%s: %s", e.Reason, e.Message) }

// StartError says why a task can never start where its Placer would put
// it; the task ends as sdk.ReasonStartError with exit code 128.
type StartError struct {
	Message string
}

func (e *StartError) Error() string { return e.Message }
