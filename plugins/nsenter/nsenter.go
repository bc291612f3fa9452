// Package nsenter is the runtime of sidecar mode: it runs process tasks
// inside the pod's main container, in that container's mount, UTS, IPC,
// network and PID namespaces and with its environment, as if started there.
// Each task runs under its own shim on the executor's side, which captures
// the exit status and the output into the task's directory: no volume needs
// to be shared with the main container. task-executor serves it as a
// built-in plugin ("task-executor plugin nsenter").
package nsenter

import (
	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// Name is the runtime's name.
const Name = "nsenter"

// version is the runtime's version, reported through Info.
const version = "0.1.0"

// New returns the runtime.
func New(log hclog.Logger) sdk.Runtime {
	return shimdriver.New(shimdriver.Options{Name: Name, Version: version, Log: log, Placer: &mainContainer{log: log}})
}
