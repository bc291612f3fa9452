// Command task-executor-shim supervises one task for a runtime plugin; see
// package shim. Plugins start it; it is not meant to be run by hand.
package main

import (
	"os"

	"github.com/opensandbox/task-executor/sdk/shim"
)

func main() { os.Exit(shim.Main(os.Args)) }
