package shimdriver

import (
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// A task's recoverable state is entirely in its shim's files in the task's
// directory; the driver keeps nothing that a restart would lose. These
// helpers translate between that state and the SDK's statuses.

// shimDir is the shim's state directory for a task: the task's own
// directory, so that a start creates no directory (see package shim).
func shimDir(task sdk.Task) string { return task.Dir }

// statusOf describes a shim's result as a task status.
func statusOf(name string, res shim.Result) sdk.TaskStatus {
	if res.Exit != nil {
		return exitStatus(name, *res.Exit)
	}
	return sdk.TaskStatus{Name: name, State: sdk.Running(res.State.StartedAt)}
}

func exitStatus(name string, e shim.Exit) sdk.TaskStatus {
	return sdk.TaskStatus{Name: name, State: sdk.Terminated(e.ExitCode, e.Signal, e.Reason, e.Message, e.StartedAt, e.FinishedAt)}
}
