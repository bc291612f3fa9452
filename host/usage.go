package host

import (
	"context"
	"errors"
	"sync"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// usageOf returns what the metrics ask at each scrape: every kept task's
// usage, from the runtimes that report it, asked of each runtime at once
// and in parallel.
func usageOf(ctrl *tasks.Manager, mgr *dispatch.Manager, log hclog.Logger) func(context.Context) []metrics.TaskUsage {
	return func(ctx context.Context) []metrics.TaskUsage {
		byRuntime := map[string][]string{}
		for _, t := range ctrl.List() {
			byRuntime[t.Runtime] = append(byRuntime[t.Runtime], t.Name)
		}
		var (
			mu  sync.Mutex
			out []metrics.TaskUsage
			wg  sync.WaitGroup
		)
		seen := map[string]bool{}
		for name, tasks := range byRuntime {
			_, rt, ok := mgr.Runtime(name)
			r, reports := rt.(sdk.UsageReporter)
			if !ok || !reports {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				us, err := r.Usage(ctx, tasks)
				if err != nil {
					if !errors.Is(err, sdk.ErrUnsupported) {
						log.Debug("a runtime gave no usage", "runtime", name, "error", err)
					}
					return
				}
				mu.Lock()
				defer mu.Unlock()
				for _, u := range us {
					// A runtime answering for a task of another would make
					// the scrape fail on a duplicate series.
					if seen[u.Name] {
						continue
					}
					seen[u.Name] = true
					out = append(out, metrics.TaskUsage{Task: u.Name, CPUSeconds: u.CPUSeconds, MemoryBytes: u.MemoryBytes, MemoryPeakBytes: u.MemoryPeakBytes})
				}
			}()
		}
		wg.Wait()
		return out
	}
}
