package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/plugins/cri"
	"github.com/opensandbox/task-executor/plugins/nsenter"
	"github.com/opensandbox/task-executor/plugins/process"
	"github.com/opensandbox/task-executor/sdk"
)

// builtins are the runtimes task-executor brings. Each still runs out of
// process, as a plugin over go-plugin's gRPC like any other: the host
// starts its own executable again as "task-executor plugin NAME", so a
// runtime that crashes or hangs takes no task state and no API with it.
var builtins = map[string]func(hclog.Logger) sdk.Runtime{
	process.Name: process.New,
	nsenter.Name: nsenter.New,
	cri.Name:     cri.New,
}

// pluginCommand is the first argument that makes task-executor a plugin.
const pluginCommand = "plugin"

// builtinNames lists the built-in runtimes, sorted.
func builtinNames() []string {
	names := make([]string, 0, len(builtins))
	for n := range builtins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// builtinPlugins says how the host starts each built-in runtime.
func builtinPlugins() ([]dispatch.Builtin, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("while finding the executable to serve the built-in runtimes: %w", err)
	}
	var out []dispatch.Builtin
	for _, n := range builtinNames() {
		out = append(out, dispatch.Builtin{Name: n, Path: exe, Args: []string{pluginCommand, n}})
	}
	return out, nil
}

// keptShim holds the shim's file in memory open for as long as the process
// lives: $TASK_EXECUTOR_SHIM names it by descriptor.
var keptShim *os.File

// servePlugin serves the built-in runtime args names as a plugin, which is
// what the host starts its own executable as; it returns only on a usage
// error.
func servePlugin(args []string) int {
	if len(args) != 1 || builtins[args[0]] == nil {
		fmt.Fprintf(os.Stderr, "usage: task-executor %s NAME, NAME one of %s (the host starts its built-in runtimes so)\n",
			pluginCommand, strings.Join(builtinNames(), ", "))
		return 2
	}
	name := args[0]
	log := sdk.Logger(name)
	// Started by a host, the plugin is handed the host's shim; started
	// alone (a conformance test), it brings its own.
	if os.Getenv(envShim) == "" {
		f, err := shimFile()
		switch {
		case err != nil:
			log.Warn("cannot use the shim in this executable; looking for task-executor-shim on disk", "error", err)
		case f != nil:
			keptShim = f
			os.Setenv(envShim, fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
		}
	}
	sdk.Serve(builtins[name](log))
	return 0
}
