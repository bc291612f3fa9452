// Command process is the task-executor runtime plugin that runs process
// tasks as plain processes on the host, each under its own shim.
package main

import (
	"context"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// version is the plugin's version, reported through Info.
const version = "0.2.0"

func main() {
	sdk.Serve(shimdriver.New(shimdriver.Options{
		Name: "process", Version: version, Log: sdk.Logger("process"), Placer: &onHost{},
	}))
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
