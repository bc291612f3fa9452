// Package sdk is everything a task-executor runtime plugin imports.
//
// A runtime plugin is a separate executable that the task-executor host
// launches with hashicorp/go-plugin and talks to over gRPC. The plugin author
// implements the Go interface Runtime and calls Serve from main; the gRPC
// protocol (package runtimepb), the handshake and the adapters between the
// interface and the wire live here, so an author never touches gRPC:
//
//	func main() {
//		sdk.Serve(mydriver.New(sdk.Logger("mydriver")))
//	}
//
// The contract, in short:
//
//   - The host owns the task's directory (Task.Dir) and the file task.json in
//     it; a runtime may create anything else there. stdout.log and stderr.log
//     in that directory are where a task's output is expected; the runtime
//     creates them, at the latest at a stream's first output.
//   - A plugin process may be killed at any moment (kill -9) and is restarted
//     by the host, which then calls Recover. Whatever a runtime needs to find
//     its tasks again must therefore live outside the plugin process: on disk,
//     in a per-task shim (see package shim), or in the runtime's own daemon.
//     Tasks must keep running while the plugin is down, and the exit status
//     of a task that ends meanwhile must not be lost.
//   - Status changes are pushed through Events as they happen; the host polls
//     List only as a safety net.
//
// Package runtimetest is a conformance kit any runtime can run against
// itself.
package sdk
