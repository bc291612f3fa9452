// Command stuckplugin is a runtime plugin for tests of how the executor
// copes with a plugin that stops answering: the process runtime under the
// name "stuck", which hangs for good in the call $STUCK_IN names (init,
// start or stop), ignoring its context, as a deadlocked plugin would.
package main

import (
	"context"
	"os"
	"time"

	"github.com/opensandbox/task-executor/plugins/process"
	"github.com/opensandbox/task-executor/sdk"
)

func main() {
	log := sdk.Logger("stuck")
	sdk.Serve(stuck{Runtime: process.NewNamed("stuck", log), in: os.Getenv("STUCK_IN")})
}

type stuck struct {
	sdk.Runtime
	in string
}

// hang blocks for good when the call is the one to hang in.
func (s stuck) hang(call string) {
	if s.in == call {
		select {}
	}
}

func (s stuck) Init(ctx context.Context, cfg sdk.Config) (sdk.Info, error) {
	s.hang("init")
	info, err := s.Runtime.Init(ctx, cfg)
	info.Name = "stuck"
	return info, err
}

func (s stuck) Start(ctx context.Context, t sdk.Task) (sdk.TaskStatus, error) {
	s.hang("start")
	return s.Runtime.Start(ctx, t)
}

func (s stuck) Stop(ctx context.Context, name string, grace time.Duration) error {
	s.hang("stop")
	return s.Runtime.Stop(ctx, name, grace)
}
