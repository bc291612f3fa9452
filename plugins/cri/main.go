// Command cri is the task-executor runtime plugin of container mode: it
// runs container tasks (spec.container, a Kubernetes container) through
// the node's CRI runtime, such as containerd. Each task is a pod sandbox in
// the node's network namespace with one container; the container's log
// goes to the task's directory.
//
// The plugin keeps nothing of its own that a crash could lose: what it
// created is labelled with the executor's owner ID, the task's name and an
// attempt ID recorded in the task's directory, and it finds it all again by
// those labels. A task's exit is written to its directory before its
// objects are removed from containerd.
package main

import "github.com/opensandbox/task-executor/sdk"

// version is the plugin's version, reported through Info.
const version = "0.1.0"

func main() {
	sdk.Serve(newDriver(sdk.Logger("cri")))
}
