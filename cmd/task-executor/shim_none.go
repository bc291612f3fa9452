//go:build !embedshim

package main

// embeddedShim is empty in a binary built without `make build`: the
// runtimes then find task-executor-shim beside the executable or in $PATH
// (see shimdriver.FindShim).
var embeddedShim []byte
