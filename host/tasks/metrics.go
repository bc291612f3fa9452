package tasks

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/sdk"
)

// startLatency says whether the state s, which e has just taken, is the
// first that shows it started, and how long after its acceptance it did.
//
// A start is counted once per task, when the task is first seen started:
// running, or already terminated with a start time (a task that exited
// before its start was reported). Tasks loaded from the store are not
// counted: their start, if any, belongs to an earlier process of the host.
// The start latency runs from the task's acceptance to the start the
// runtime reports, so that it measures the path to a running process, not
// the delivery of the event (exit→visible measures that).
func (e *entry) startLatency(s corev1.ContainerState) (time.Duration, bool) {
	if e.startCounted {
		return 0, false
	}
	var startedAt time.Time
	switch {
	case s.Running != nil:
		startedAt = s.Running.StartedAt.Time
	case s.Terminated != nil && s.Terminated.Reason != sdk.ReasonStartError:
		startedAt = s.Terminated.StartedAt.Time
	}
	if s.Running == nil && startedAt.IsZero() {
		return 0, false
	}
	if startedAt.IsZero() {
		startedAt = time.Now()
	}
	return startedAt.Sub(e.rec.CreatedAt), true
}

// CountStates counts the tasks by state, for the metrics.
func (c *Manager) CountStates() metrics.StateCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n metrics.StateCounts
	for _, e := range c.tasks {
		switch s := e.rec.State; {
		case s.Terminated != nil:
			n.Terminated++
		case s.Running != nil:
			n.Running++
		default:
			n.Waiting++
		}
	}
	return n
}
