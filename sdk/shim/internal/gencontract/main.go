// Command gencontract writes the C header of the shim's contract (see
// package contract) to the file named by its argument: go generate in
// sdk/shim runs it for csrc/contract.h.
package main

import (
	"fmt"
	"os"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gencontract OUTPUT.h")
		os.Exit(2)
	}
	if err := os.WriteFile(os.Args[1], contract.Header(), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "gencontract: %v\n", err)
		os.Exit(1)
	}
}
