// Package process is the runtime that runs process tasks as plain processes
// on the host, each under its own shim. task-executor serves it as a
// built-in plugin ("task-executor plugin process").
package process

import (
	"context"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// Name is the runtime's name.
const Name = "process"

// version is the runtime's version, reported through Info.
const version = "0.2.0"

// New returns the runtime.
func New(log hclog.Logger) sdk.Runtime { return NewNamed(Name, log) }

// NewNamed returns the runtime under another name, for a plugin that
// serves it beside the built-in one: its task cgroups are then apart from
// the built-in's.
func NewNamed(name string, log hclog.Logger) sdk.Runtime {
	return shimdriver.New(shimdriver.Options{Name: name, Version: version, Log: log, Placer: &onHost{}, TaskCgroups: true})
}

// onHost places every task on the host, with the host's environment, in its
// own task directory unless it names another.
type onHost struct{ env []string }

func (p *onHost) Init(sdk.Config) error {
	p.env = shimdriver.HostEnv()
	return nil
}

func (p *onHost) Place(_ context.Context, task sdk.Task) (shimdriver.Place, error) {
	return shimdriver.Place{Env: p.env, Dir: task.Dir}, nil
}
