// Command retry is an example task-executor runtime plugin, built against
// the SDK alone: it runs process tasks and runs a failed one again, up to
// maxAttempts times in all with an exponential backoff, as the task's
// runtime options ask (see options.go). A task's status stays running
// through its retries; its terminated state's message tells how many
// attempts it took.
//
// Each task runs under a supervisor, this executable started again with
// the argument "supervise" in a session of its own, so that tasks survive a
// crash of the plugin. The runtime is in driver.go, one handle per task
// (owning the wait for its supervisor) in handle.go, what survives a
// restart in state.go, and the supervisor in supervisor.go.
package main

import (
	"os"

	"github.com/opensandbox/task-executor/sdk"
)

// name is the runtime's name: spec.runtime selects it.
const name = "retry"

// version is the plugin's version, reported through Info.
const version = "0.1.0"

func main() {
	if len(os.Args) == 3 && os.Args[1] == supervisorArg {
		os.Exit(superviseMain(os.Args[2]))
	}
	sdk.Serve(NewDriver(sdk.Logger(name)))
}
