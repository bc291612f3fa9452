// Command stuckplugin is a runtime plugin for tests of how the executor
// copes with a plugin that stops answering: the process runtime under the
// name "stuck", which hangs for good in the call $STUCK_IN names (init,
// start or stop), ignoring its context, as a deadlocked plugin would. With
// $SLOW_VALIDATE (a duration) it is a slow plugin instead: each Validate
// takes that long, and first creates the file $SLOW_VALIDATE_MARK.
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
	slow, _ := time.ParseDuration(os.Getenv("SLOW_VALIDATE"))
	sdk.Serve(stuck{Runtime: process.NewNamed("stuck", log), in: os.Getenv("STUCK_IN"), slow: slow, mark: os.Getenv("SLOW_VALIDATE_MARK")})
}

type stuck struct {
	sdk.Runtime
	in   string
	slow time.Duration
	mark string
}

func (s stuck) Validate(ctx context.Context, spec sdk.TaskSpec) error {
	if s.slow > 0 {
		if s.mark != "" {
			_ = os.WriteFile(s.mark, nil, 0o600)
		}
		select {
		case <-time.After(s.slow):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Runtime.Validate(ctx, spec)
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
	if s.slow > 0 {
		info.NoValidate = false // every spec goes through the slow Validate
	}
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
