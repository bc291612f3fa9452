// Command bwrap is an example task-executor runtime plugin, built against
// the SDK alone: it runs process tasks inside bubblewrap (bwrap), each in a
// sandbox of its own with a read-only root, a private /tmp, no network
// (unless the runtime option network=on asks for it), its own PID, IPC and
// UTS namespaces, and the executor's data directory hidden but for the
// task's own directory.
//
// It is sdk/shimdriver with a Placer that wraps each task's command in
// bwrap (Place.Wrap): the per-task shim, timeouts, stops with a grace
// period, output and its rotation, recovery after a crash, start errors and
// a cgroup per task are the driver's.
package main

import (
	"context"
	"fmt"
	"os/exec"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// name is the runtime's name: what spec.runtime names.
const name = "bwrap"

// OptNetwork is the runtime option that gives a task the host's network:
// "on", or "off" (the default).
const OptNetwork = "network"

func main() {
	sdk.Serve(shimdriver.New(shimdriver.Options{
		Name: name, Version: "0.1.0", Log: sdk.Logger(name),
		Placer: &sandbox{}, TaskCgroups: true, ValidateSpec: validate,
	}))
}

// sandbox places every task in a bwrap sandbox of its own.
type sandbox struct {
	bwrap   string // bwrap's absolute path
	dataDir string // hidden in the sandbox
	env     []string
}

func (s *sandbox) Init(cfg sdk.Config) error {
	path, err := exec.LookPath("bwrap")
	if err != nil {
		return fmt.Errorf("while looking for bubblewrap (Debian: apt install bubblewrap): %w", err)
	}
	s.bwrap, s.dataDir, s.env = path, cfg.DataDir, shimdriver.HostEnv()
	return nil
}

func (s *sandbox) Place(_ context.Context, task sdk.Task) (shimdriver.Place, error) {
	dir := task.Spec.Process.WorkingDir
	if dir == "" {
		dir = task.Dir
	}
	wrap := []string{s.bwrap,
		"--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
		// Other tasks' directories are hidden; the task's own is writable.
		"--tmpfs", s.dataDir, "--bind", task.Dir, task.Dir,
		"--unshare-pid", "--unshare-ipc", "--unshare-uts", "--chdir", dir}
	if task.Spec.RuntimeOptions[OptNetwork] != "on" {
		wrap = append(wrap, "--unshare-net")
	}
	return shimdriver.Place{Env: s.env, Dir: task.Dir, Wrap: append(wrap, "--")}, nil
}

// validate refuses runtime options bwrap does not know: a create with one
// is a 400.
func validate(_ context.Context, spec sdk.TaskSpec) error {
	for k, v := range spec.RuntimeOptions {
		if k != OptNetwork {
			return fmt.Errorf("runtime option %q: the %s runtime knows only %q: %w", k, name, OptNetwork, sdk.ErrInvalidSpec)
		}
		if v != "on" && v != "off" {
			return fmt.Errorf("runtime option %s=%q: want on or off: %w", k, v, sdk.ErrInvalidSpec)
		}
	}
	return nil
}
