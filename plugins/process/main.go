// Command process is the task-executor runtime plugin that runs process
// tasks as plain processes on the host, each under its own shim.
package main

import "github.com/opensandbox/task-executor/sdk"

func main() { sdk.Serve(newDriver(sdk.Logger("process"))) }
