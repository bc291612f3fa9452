//go:build embedshim

package main

import _ "embed"

// embeddedShim is the task-executor-shim executable, compiled from
// sdk/shim/csrc by `make build` and put here with go build's -overlay (it is
// never in the source tree).
//
//go:embed task-executor-shim
var embeddedShim []byte
