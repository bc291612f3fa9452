package tasks

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// The work with the runtimes: starting queued tasks, taking the states
// they report, re-adopting their tasks after a (re)start of a plugin,
// carrying out deletions, and the periodic safety net. Each outcome is an
// event for transition.

// enqueueLocked puts e into the start queue at its creation-order place.
func (c *Manager) enqueueLocked(e *entry) {
	i := sort.Search(len(c.pending), func(i int) bool { return c.pending[i].seq > e.seq })
	c.pending = append(c.pending, nil)
	copy(c.pending[i+1:], c.pending[i:])
	c.pending[i] = e
}

// pumpLocked hands queued tasks to their runtimes in creation order, as
// far as free slots allow, and labels the rest.
func (c *Manager) pumpLocked() {
	if c.ctx.Err() != nil {
		return // shutting down: start nothing new
	}
	now := time.Now()
	var start []*entry
	kept := c.pending[:0]
	for _, e := range c.pending {
		rs := c.rts[e.rec.Runtime]
		ready := rs != nil && rs.recovered && !rs.recovering && !now.Before(e.retryAt)
		full := c.cfg.MaxConcurrent > 0 && c.active+len(start) >= c.cfg.MaxConcurrent
		switch {
		case !e.stage.queued() || e.del >= delMarked:
			// Started, ended or gone meanwhile; or deleted before it was
			// ever handed over: the deletion removes it.
			continue
		case full:
			kept = append(kept, e)
		case !ready:
			kept = append(kept, e)
		default:
			start = append(start, e)
		}
	}
	for i := len(kept); i < len(c.pending); i++ {
		c.pending[i] = nil
	}
	c.pending = kept
	for _, e := range start {
		rs := c.rts[e.rec.Runtime]
		c.transition(e, event{kind: evStartSent})
		c.wg.Add(1)
		go c.start(e, rs.rt, rs.epoch)
	}
	if c.cfg.MaxConcurrent > 0 && c.active >= c.cfg.MaxConcurrent {
		msg := fmt.Sprintf("waiting for one of the %d task slots (--max-concurrent-tasks) to free", c.cfg.MaxConcurrent)
		for _, e := range c.pending {
			if e.del == delNone {
				c.transition(e, event{kind: evQueued, msg: msg})
			}
		}
	}
}

// start hands one task to its runtime.
func (c *Manager) start(e *entry, rt sdk.Runtime, epoch uint64) {
	defer c.wg.Done()
	c.mu.Lock()
	// The record keeps the spec as sent (valueFrom and all), so that the
	// same spec sent again compares equal; the runtime gets it resolved.
	spec, unresolved := resolveEnv(e.rec.Spec, c.cfg.Downward)
	task := sdk.Task{Name: e.rec.Name, Spec: spec, Dir: c.store.Dir(e.rec.Name)}
	c.mu.Unlock()
	var st sdk.TaskStatus
	var err error
	if unresolved != nil {
		err = fmt.Errorf("%v: %w", unresolved, sdk.ErrInvalidSpec)
	} else {
		err = c.call(c.ctx, e.rec.Runtime, "Start", startTimeout, func(ctx context.Context) error {
			var serr error
			st, serr = rt.Start(ctx, task)
			return serr
		})
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tasks[task.Name] != e || e.stage != stageStarting {
		return
	}
	if rs := c.rts[e.rec.Runtime]; rs == nil || rs.epoch != epoch {
		return // the plugin restarted meanwhile; its Recover decides
	}
	switch {
	case err == nil:
		c.transition(e, event{kind: evStarted, state: st.State})
	case errors.Is(err, sdk.ErrInvalidSpec):
		c.transition(e, event{kind: evStartRefused, state: sdk.Terminated(128, 0, sdk.ReasonStartError, err.Error(), time.Time{}, time.Now())})
	default:
		// The outcome is unknown (the plugin may have died mid-call).
		// Start is idempotent, so ask again a little later.
		c.log.Warn("starting a task failed; will retry", "task", task.Name, "runtime", e.rec.Runtime, "error", err)
		c.transition(e, event{kind: evStartLost})
	}
}

// Report applies a status a runtime pushed.
func (c *Manager) Report(runtime string, st sdk.TaskStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.tasks[st.Name]
	if !ok || e.rec.Runtime != runtime {
		return
	}
	// An event of an earlier task of the same name (deleted, then created
	// anew) can arrive once the new task is in the table. Until the new
	// task's own start has answered, a state from before its creation is
	// not its own: applied, it ended the new task with its predecessor's
	// "stopped on request" (found by TestConcurrentClients in host/e2e).
	if (e.stage.queued() || e.stage == stageStarting) && predates(st.State, e.rec.CreatedAt) {
		return
	}
	c.transition(e, event{kind: evReported, state: st.State})
}

// predates reports whether a runtime's state began (running) or ended
// (terminated) before t.
func predates(s corev1.ContainerState, t time.Time) bool {
	switch {
	case s.Running != nil:
		return !s.Running.StartedAt.IsZero() && s.Running.StartedAt.Time.Before(t)
	case s.Terminated != nil:
		return !s.Terminated.FinishedAt.IsZero() && s.Terminated.FinishedAt.Time.Before(t)
	}
	return false
}

// RuntimeUp is called when a runtime's plugin has (re)started: the
// manager re-adopts the runtime's tasks, then resumes starting tasks on
// it.
func (c *Manager) RuntimeUp(name string, rt sdk.Runtime) {
	c.mu.Lock()
	rs := c.rts[name]
	if rs == nil {
		rs = &runtimeState{}
		c.rts[name] = rs
	}
	rs.rt = rt
	rs.epoch++
	rs.recovered = false
	c.mu.Unlock()
	c.recover(name)
}

// AwaitRecovered returns once each of the named runtimes has recovered its
// tasks, or with false when ctx ends first. Until a runtime has, its
// running tasks show as they were recorded (waiting): the host serves only
// after, so that a client never sees a running task go back to waiting.
func (c *Manager) AwaitRecovered(ctx context.Context, names []string) bool {
	for {
		c.mu.Lock()
		all := true
		for _, n := range names {
			if rs := c.rts[n]; rs == nil || !rs.recovered {
				all = false
			}
		}
		note := c.recoveries
		c.mu.Unlock()
		if all {
			return true
		}
		select {
		case <-note:
		case <-ctx.Done():
			return false
		}
	}
}

// RuntimeDown is called when a runtime's plugin has gone.
func (c *Manager) RuntimeDown(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rs := c.rts[name]; rs != nil {
		rs.rt = nil
		rs.epoch++
		rs.recovered = false
	}
}

// recover asks a runtime about every unfinished task it may have.
func (c *Manager) recover(name string) {
	c.mu.Lock()
	rs := c.rts[name]
	if rs == nil || rs.rt == nil || rs.recovered || rs.recovering {
		c.mu.Unlock()
		return
	}
	rs.recovering = true
	rt, epoch := rs.rt, rs.epoch
	var tasks []sdk.Task
	var asked []*entry
	for _, e := range c.tasks {
		if e.rec.Runtime != name || e.stage == stageTerminated || e.stage.queued() {
			continue
		}
		spec, _ := resolveEnv(e.rec.Spec, c.cfg.Downward)
		tasks = append(tasks, sdk.Task{Name: e.rec.Name, Spec: spec, Dir: c.store.Dir(e.rec.Name)})
		asked = append(asked, e)
	}
	c.mu.Unlock()

	var sts []sdk.TaskStatus
	err := c.call(c.ctx, name, "Recover", recoverTimeout+time.Duration(len(tasks))*recoverPerTask, func(ctx context.Context) error {
		var rerr error
		sts, rerr = rt.Recover(ctx, tasks)
		return rerr
	})

	c.mu.Lock()
	defer c.mu.Unlock()
	rs.recovering = false
	if rs.epoch != epoch {
		return
	}
	if err != nil {
		c.log.Warn("recovering tasks failed; will retry", "runtime", name, "tasks", len(tasks), "error", err)
		return
	}
	found := make(map[string]sdk.TaskStatus, len(sts))
	for _, s := range sts {
		found[s.Name] = s
	}
	for _, e := range asked {
		if c.tasks[e.rec.Name] != e {
			continue
		}
		if s, ok := found[e.rec.Name]; ok {
			c.transition(e, event{kind: evRecovered, state: s.State})
		} else if e.stage != stageTerminated && !e.stage.queued() {
			// Never started (or the start was lost): start it, in order.
			c.transition(e, event{kind: evNotRecovered})
		}
	}
	rs.recovered = true
	close(c.recoveries)
	c.recoveries = make(chan struct{})
	c.log.Info("recovered tasks", "runtime", name, "asked", len(tasks), "found", len(sts))
	c.pumpLocked()
	for _, e := range c.tasks {
		if e.rec.Runtime == name {
			c.scheduleDeleteLocked(e)
		}
	}
}

// scheduleDeleteLocked carries out an accepted deletion in the background
// once the task is in a stage that allows it.
func (c *Manager) scheduleDeleteLocked(e *entry) {
	if e.del != delMarked {
		return
	}
	// Past its bound, a deletion is not tried again, however it comes
	// here (the loop, or a plugin recovered moments after it was killed
	// as stuck): one more try would take a whole Stop timeout beyond it.
	if time.Now().After(e.rec.DeletionTimestamp.Add(e.rec.DeletionGracePeriod + deleteGiveUp)) {
		c.forceDeleteLocked(e)
		return
	}
	switch e.stage {
	case stagePending:
		// Never handed to a runtime: nothing to stop.
		c.transition(e, event{kind: evDeleting})
		c.wg.Add(1)
		go c.finishDelete(e, nil, 0)
		return
	case stageStarting, stageUnknown:
		return // start() or recover() brings a new stage, which calls back
	}
	rs := c.rts[e.rec.Runtime]
	if rs == nil || rs.rt == nil || !rs.recovered {
		return // the runtime is down; recover() calls back
	}
	c.transition(e, event{kind: evDeleting})
	c.wg.Add(1)
	go c.finishDelete(e, rs.rt, rs.epoch)
}

// forceDeleteLocked carries out a deletion its runtime has not carried out
// in time (its plugin stuck or down): the manager kills what it can reach
// of the task (killHolders), ends it as ContainerStatusUnknown unless it
// has ended, and removes it, so that an accepted deletion always
// completes.
func (c *Manager) forceDeleteLocked(e *entry) {
	c.transition(e, event{kind: evDeleting})
	name, runtime := e.rec.Name, e.rec.Runtime
	c.wg.Add(1)
	go func() {
		killed := killHolders(c.store.Dir(name))
		c.log.Warn("the runtime did not carry out a deletion in time; the executor ended the task itself",
			"task", name, "runtime", runtime, "giveUpAfterGrace", deleteGiveUp.String(), "killedProcesses", killed)
		msg := fmt.Sprintf("the %s runtime did not confirm the task's stop within its grace period and %s; the executor killed the %d processes it found in the task's directory",
			runtime, deleteGiveUp, killed)
		c.mu.Lock()
		c.transition(e, event{kind: evForceEnded, state: sdk.Terminated(137, 0, sdk.ReasonStatusUnknown, msg, time.Time{}, time.Now())})
		c.mu.Unlock()
		c.finishDelete(e, nil, 0)
	}()
}

// finishDelete stops the task (unless it has terminated), has the runtime
// release it and removes its directory.
func (c *Manager) finishDelete(e *entry, rt sdk.Runtime, epoch uint64) {
	defer c.wg.Done()
	c.mu.Lock()
	name, grace, terminated, runtime := e.rec.Name, e.rec.DeletionGracePeriod, e.rec.State.Terminated != nil, e.rec.Runtime
	c.mu.Unlock()
	fail := func(what string, err error) {
		c.log.Warn("deleting a task failed; will retry", "task", name, "step", what, "error", err)
		c.mu.Lock()
		c.transition(e, event{kind: evDeleteFailed})
		c.mu.Unlock()
	}
	if rt != nil {
		if !terminated {
			err := c.call(c.ctx, runtime, "Stop", grace+stopSlack, func(ctx context.Context) error { return rt.Stop(ctx, name, grace) })
			if err != nil && !errors.Is(err, sdk.ErrNotFound) {
				fail("stop", err)
				return
			}
		}
		if err := c.call(c.ctx, runtime, "Remove", removeTimeout, func(ctx context.Context) error { return rt.Remove(ctx, name) }); err != nil {
			fail("remove", err)
			return
		}
	}
	// The directory's removal and the write of the final state are ordered
	// (persister.write): no write lands in a directory being removed.
	e.ioMu.Lock()
	err := c.store.Remove(name)
	if err == nil {
		c.mu.Lock()
		c.transition(e, event{kind: evRemoved})
		c.mu.Unlock()
	}
	e.ioMu.Unlock()
	if err != nil {
		fail("remove files", err)
		return
	}
	c.log.Debug("task deleted", "task", name)
}

// retryInterval is how often the manager retries what failed (starts,
// recoveries of plugins, deletions). The comparison with the runtimes runs
// only every ReconcileInterval: it lists every task of every runtime, which
// with 1,000 tasks every 500 ms took most of the CPU the executor used
// while nothing happened (0.6 % of a core).
const retryInterval = 500 * time.Millisecond

// loop is the safety net: it retries what failed and compares the
// manager's view with each runtime's.
func (c *Manager) loop() {
	defer c.wg.Done()
	t := time.NewTicker(min(retryInterval, c.cfg.ReconcileInterval))
	defer t.Stop()
	var listed time.Time
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		relist := now.Sub(listed) >= c.cfg.ReconcileInterval
		if relist {
			listed = now
		}
		c.reconcile(relist)
	}
}

// reconcile retries what failed and, when relist is set, applies what
// each runtime lists.
func (c *Manager) reconcile(relist bool) {
	c.mu.Lock()
	type target struct {
		name  string
		rt    sdk.Runtime
		epoch uint64
	}
	var up []target
	var needRecover []string
	for name, rs := range c.rts {
		switch {
		case rs.rt == nil:
		case !rs.recovered:
			needRecover = append(needRecover, name)
		default:
			up = append(up, target{name, rs.rt, rs.epoch})
		}
	}
	for _, e := range c.tasks {
		c.scheduleDeleteLocked(e)
	}
	c.pumpLocked()
	c.mu.Unlock()

	for _, name := range needRecover {
		c.recover(name)
	}
	if !relist {
		return
	}
	for _, tg := range up {
		asked := time.Now()
		var sts []sdk.TaskStatus
		err := c.call(c.ctx, tg.name, "List", listTimeout, func(ctx context.Context) error {
			var lerr error
			sts, lerr = tg.rt.List(ctx)
			return lerr
		})
		if err != nil {
			continue // the dispatcher notices a dead plugin
		}
		c.mu.Lock()
		if rs := c.rts[tg.name]; rs != nil && rs.epoch == tg.epoch {
			for _, s := range sts {
				// A task created since the runtime was asked is not in
				// its answer; an earlier task of the same name may be.
				if e, ok := c.tasks[s.Name]; ok && e.rec.Runtime == tg.name && e.stage == stageStarted && !e.rec.CreatedAt.After(asked) {
					c.transition(e, event{kind: evReported, state: s.State})
				}
			}
		}
		c.mu.Unlock()
	}
}
