// Command nsenter is the task-executor runtime plugin of sidecar mode: it
// runs process tasks inside the pod's main container, in that container's
// mount, UTS, IPC, network and PID namespaces and with its environment, as
// if started there. Each task runs under its own shim on the executor's
// side, which captures the exit status and the output into the task's
// directory: no volume needs to be shared with the main container.
package main

import (
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// version is the plugin's version, reported through Info.
const version = "0.1.0"

func main() {
	log := sdk.Logger("nsenter")
	sdk.Serve(shimdriver.New(shimdriver.Options{
		Name: "nsenter", Version: version, Log: log, Placer: &mainContainer{log: log},
	}))
}
