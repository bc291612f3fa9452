// Package cri is the runtime of container mode: it runs container tasks
// (spec.container, a Kubernetes container) through the node's CRI runtime,
// such as containerd. task-executor serves it as a built-in plugin
// ("task-executor plugin cri"); where each task's container is placed is in
// place.go.
//
// The runtime keeps nothing of its own that a crash could lose: what it
// created is labelled with the executor's owner ID, the task's name and an
// attempt ID recorded in the task's directory, and it finds it all again by
// those labels. A task's exit is written to its directory before its
// objects are removed from containerd.
package cri

import (
	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// Name is the runtime's name.
const Name = "cri"

// version is the runtime's version, reported through Info.
const version = "0.1.0"

// New returns the runtime.
func New(log hclog.Logger) sdk.Runtime { return newDriver(log) }
