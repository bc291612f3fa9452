package cri

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// reasonSandboxStopped ends a task whose container the runtime stopped with
// its pod sandbox, not at the executor's request.
const reasonSandboxStopped = "PodSandboxStopped"

// Reasons of the waiting state, as the kubelet reports them.
const (
	reasonCreating         = "ContainerCreating"
	reasonErrImagePull     = "ErrImagePull"
	reasonImagePullBackOff = "ImagePullBackOff"
	reasonErrImageNever    = "ErrImageNeverPull"
)

// Back-off between attempts to get an image or a sandbox, as the kubelet's
// image pull back-off: doubling up to a ceiling.
const (
	backoffInitial = 5 * time.Second
	backoffMax     = 5 * time.Minute
	// backoffShowError is how long a failed pull shows as ErrImagePull
	// before ImagePullBackOff.
	backoffShowError = time.Second
)

// handle is one task. Its run goroutine creates the task's sandbox and
// container (or finds them after a restart) and then watches the container
// until it exits; Stop takes over from it by ending it first, so only one
// goroutine ever acts on the task's containerd objects at a time.
type handle struct {
	d       *Driver
	task    sdk.Task
	attempt string

	mu          sync.Mutex
	st          sdk.TaskStatus
	final       bool
	containerID string
	// changed is closed and replaced at every status change.
	changed chan struct{}
	// cancel ends the run goroutine, which closes done.
	cancel context.CancelFunc
	done   chan struct{}

	// exited is nudged by the driver's monitor when the container is no
	// longer running.
	exited chan struct{}
	// stopRequested: this plugin process asked for the container's stop.
	stopRequested atomic.Bool
	// sandboxStopped: the container's sandbox was found stopped when it
	// ended (not by this executor).
	sandboxStopped atomic.Bool
	// exit is containerd's own report of the container's exit, not yet
	// acted on; oomReported, its report of an OOM kill in the container.
	exit        atomic.Pointer[taskExit]
	oomReported atomic.Bool
	// logHeld: the container's log was still written logCloseFor after
	// its exit.
	logHeld atomic.Bool
	// runtimeBehind: the exit was reported from containerd's event, and
	// containerd may not have handled it yet (see awaitRuntimeExit).
	runtimeBehind atomic.Bool
	// cleaning counts the driver's cleanup of the task under way.
	cleaning sync.WaitGroup
}

// taskExit is what containerd's exit event tells of the container's end.
type taskExit struct {
	code int32
	at   time.Time
}

func newHandle(d *Driver, task sdk.Task, attempt string) *handle {
	return &handle{
		d: d, task: task, attempt: attempt,
		st:      sdk.TaskStatus{Name: task.Name, State: sdk.Waiting(reasonCreating, "the container is being created")},
		changed: make(chan struct{}),
		exited:  make(chan struct{}, 1),
	}
}

// snapshot returns the status, whether it is final, and the channel closed
// at its next change.
func (h *handle) snapshot() (sdk.TaskStatus, bool, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st, h.final, h.changed
}

// set records a non-final status and publishes it if it changed.
func (h *handle) set(state sdk.TaskStatus) {
	h.mu.Lock()
	if h.final || sameState(h.st, state) {
		h.mu.Unlock()
		return
	}
	h.st = state
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
	h.d.events.Publish(state)
}

func sameState(a, b sdk.TaskStatus) bool {
	switch {
	case a.State.Waiting != nil && b.State.Waiting != nil:
		return *a.State.Waiting == *b.State.Waiting
	case a.State.Running != nil && b.State.Running != nil:
		return a.State.Running.StartedAt.Equal(&b.State.Running.StartedAt)
	}
	return false
}

// finish records the task's final status in its directory, publishes it,
// and then removes its objects from containerd: once the exit is on disk,
// containerd no longer needs to hold it.
func (h *handle) finish(st sdk.TaskStatus) {
	h.mu.Lock()
	if h.final {
		h.mu.Unlock()
		return
	}
	// Recorded before (by a plugin process that died before removing the
	// container): the first record is the task's end.
	rec, err := readExit(h.task.Dir)
	if err != nil {
		// The container stays in containerd, which keeps its exit code: a
		// later look (the monitor, a restart) tries again.
		h.mu.Unlock()
		h.d.log.Error("cannot read a task's exit record; will retry", "task", h.task.Name, "error", err)
		return
	}
	if rec != nil {
		st = rec.status(h.task.Name)
	}
	h.st = st
	h.final = true
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
	h.d.events.Publish(st)
	h.d.log.Debug("task terminated", "task", h.task.Name, "exitCode", st.State.Terminated.ExitCode, "reason", st.State.Terminated.Reason)
	// The record is written after the status is out (the host keeps its
	// own, durably) and before the container, which holds the exit code
	// too, leaves containerd.
	var record *exitRecord
	if rec == nil {
		r := recordOf(st)
		record = &r
	}
	h.d.cleanup(h, record)
}

// start runs the handle's goroutine.
func (h *handle) start() {
	ctx, cancel := context.WithCancel(h.d.ctx)
	done := make(chan struct{})
	h.mu.Lock()
	h.cancel, h.done = cancel, done
	h.mu.Unlock()
	go func() {
		defer close(done)
		defer cancel()
		h.run(ctx)
	}()
}

// halt ends the run goroutine and waits for it.
func (h *handle) halt() {
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// run brings the task to running, from wherever it is (nothing created
// yet, or anything a previous plugin process left), and watches it.
func (h *handle) run(ctx context.Context) {
	backoff := backoffInitial
	for {
		err := h.create(ctx)
		if err == nil || ctx.Err() != nil {
			break
		}
		var wait *waitError
		if !errors.As(err, &wait) {
			h.d.log.Warn("a task's container could not be created; will retry", "task", h.task.Name, "error", err)
			wait = &waitError{reason: reasonCreating, msg: err.Error()}
		}
		h.set(sdk.TaskStatus{Name: h.task.Name, State: sdk.Waiting(wait.reason, wait.msg)})
		pause := backoff
		if wait.reason == reasonErrImagePull {
			// As the kubelet shows it: the failure first, then the back-off
			// until the next attempt.
			if !sleep(ctx, backoffShowError) {
				return
			}
			pause -= backoffShowError
			h.set(sdk.TaskStatus{Name: h.task.Name, State: sdk.Waiting(reasonImagePullBackOff,
				fmt.Sprintf("Back-off pulling image %q: %s", h.task.Spec.Container.Image, wait.msg))})
		}
		if !sleep(ctx, pause) {
			return
		}
		backoff = min(backoff*2, backoffMax)
	}
	if ctx.Err() == nil {
		h.watch(ctx)
	}
}

// sleep waits for d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// waitError is a reason the task cannot be created yet; it is shown as the
// task's waiting state while the handle retries.
type waitError struct{ reason, msg string }

func (e *waitError) Error() string { return e.reason + ": " + e.msg }

// create finds or makes the task's sandbox and container and starts the
// container. It returns nil once the task runs or has terminated.
func (h *handle) create(ctx context.Context) error {
	d := h.d
	sel := d.selector(h.task.Name, h.attempt)
	ctrs, err := d.cri.containers(ctx, sel)
	if err != nil {
		return err
	}
	if len(ctrs) > 0 {
		// Left by a previous plugin process: carry on from its state.
		return h.adopt(ctx, ctrs[0].Id)
	}

	ref, err := d.ensureImage(ctx, h.task.Spec.Container)
	if err != nil {
		return err
	}
	sandboxID, sandboxCfg, err := d.place.sandbox(ctx, h)
	if err != nil {
		return err
	}
	mounts, err := d.mounts(h.task)
	if err != nil {
		h.startError(err)
		return nil
	}
	if err := d.checkNonRoot(ctx, h.task.Spec.Container, ref); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.startError(err)
		return nil
	}
	cfg, err := d.containerConfig(h.task, h.attempt, ref, mounts)
	if err != nil {
		h.startError(err)
		return nil
	}
	resp, err := d.cri.rt.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId:  sandboxID,
		Config:        cfg,
		SandboxConfig: sandboxCfg,
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		h.startError(fmt.Errorf("cannot create the container: %w", err))
		return nil
	}
	return h.adopt(ctx, resp.ContainerId)
}

// adopt takes the container as the task's and brings it to running, or
// records its end.
func (h *handle) adopt(ctx context.Context, id string) error {
	h.mu.Lock()
	h.containerID = id
	h.mu.Unlock()
	cs, err := h.d.cri.containerStatus(ctx, id)
	if err != nil {
		return err
	}
	if cs == nil {
		return fmt.Errorf("container %s vanished", id)
	}
	if cs.State == cri.ContainerState_CONTAINER_CREATED {
		if _, err := h.d.cri.rt.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: id}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !strings.Contains(err.Error(), "already in starting state") {
				h.startError(fmt.Errorf("cannot start the container: %w", err))
				return nil
			}
			// A start of this container asked by an earlier plugin
			// process, killed while it waited, is still under way in the
			// runtime: it ends with the container running or exited.
		}
		if cs, err = h.awaitStarted(ctx, id); err != nil {
			return err
		}
	}
	h.observe(ctx, cs)
	return nil
}

// startPoll is how often awaitStarted looks at a container being started.
const startPoll = 50 * time.Millisecond

// awaitStarted returns the container's status once it is no longer being
// started (or ctx's error: the host asks again).
func (h *handle) awaitStarted(ctx context.Context, id string) (*cri.ContainerStatus, error) {
	for {
		cs, err := h.d.cri.containerStatus(ctx, id)
		if err != nil {
			return nil, err
		}
		if cs == nil {
			return nil, fmt.Errorf("container %s vanished", id)
		}
		if cs.State != cri.ContainerState_CONTAINER_CREATED {
			return cs, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("while waiting for container %s to start: %w", id, ctx.Err())
		case <-time.After(startPoll):
		}
	}
}

// startError ends a task that cannot start, as the kubelet would report a
// container that cannot be created: exit code 128, reason StartError.
func (h *handle) startError(err error) {
	h.finish(sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(128, 0, sdk.ReasonStartError, err.Error(), time.Time{}, time.Now())})
}

// observe applies a container status from containerd. An exit is
// reported once the container's log is complete (see logWritten), or
// after logCloseFor without it; not at all if ctx ends first (whoever
// ended it acts on the task now).
func (h *handle) observe(ctx context.Context, cs *cri.ContainerStatus) {
	switch cs.State {
	case cri.ContainerState_CONTAINER_RUNNING:
		h.set(sdk.TaskStatus{Name: h.task.Name, State: sdk.Running(time.Unix(0, cs.StartedAt))})
	case cri.ContainerState_CONTAINER_EXITED:
		closed, err := h.awaitLogClosed(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			h.d.logUnknown(err)
		case !closed:
			h.d.log.Warn("a task's log is still written after its container exited (by a process that outlived it?); reporting the exit with the log as it is",
				"task", h.task.Name, "waited", logCloseFor.String())
		}
		h.finish(h.terminated(cs))
	}
}

// exitFromEvent settles the task from containerd's own exit event, tens
// of milliseconds before the CRI status shows the exit, once the
// container's log is complete, and reports whether it did. It does so for
// a successful exit only, and leaves to the CRI status what only
// containerd's CRI service can tell: an exit by a signal (an OOM kill, the
// sandbox's stop, the reason for which comes after the exit), a failure
// (a process of the task killed for lack of memory makes it OOMKilled, and
// containerd's shim publishes the OOM and the exit from goroutines of
// their own, so the OOM event may come second: TestOOMKilled/child once
// read Failed so) and a container in which an OOM kill was reported.
func (h *handle) exitFromEvent(ctx context.Context) bool {
	ex := h.exit.Swap(nil)
	if ex == nil || ex.code != 0 || h.oomReported.Load() {
		return false
	}
	st, final, _ := h.snapshot()
	if final || st.State.Running == nil {
		return false
	}
	closed, err := h.awaitLogClosed(ctx)
	if err != nil {
		h.d.logUnknown(err)
	}
	if !closed || h.oomReported.Load() {
		return false
	}
	h.runtimeBehind.Store(true)
	h.finish(h.ended(ex.code, false, "", st.State.Running.StartedAt.Time, ex.at))
	return true
}

// awaitRuntimeExit waits, for an exit reported from containerd's event,
// until containerd has handled it too (deleted the task and closed its IO,
// which its CRI status then shows), for up to runtimeExitFor: a container
// or sandbox removed meanwhile fails (the shim is going away under
// containerd's stop) and containerd's copy of the container's output is
// cut. Anyone removing the task's objects calls it first.
func (h *handle) awaitRuntimeExit(ctx context.Context) {
	if !h.runtimeBehind.Load() {
		return
	}
	h.mu.Lock()
	id := h.containerID
	h.mu.Unlock()
	deadline := time.Now().Add(runtimeExitFor)
	for pause := recheckFirst; ; pause = min(2*pause, recheckMax) {
		cs, err := h.d.cri.containerStatus(ctx, id)
		if err == nil && (cs == nil || cs.State != cri.ContainerState_CONTAINER_RUNNING) {
			h.runtimeBehind.Store(false)
			return
		}
		if time.Now().After(deadline) {
			h.d.log.Warn("containerd has not handled a task's exit yet; removing its container anyway", "task", h.task.Name, "waited", runtimeExitFor.String())
			return
		}
		if !sleep(ctx, pause) {
			return
		}
	}
}

// runtimeExitFor bounds awaitRuntimeExit: containerd handles an exit in
// tens of milliseconds.
const runtimeExitFor = 10 * time.Second

// terminated builds a final status from an exited container.
func (h *handle) terminated(cs *cri.ContainerStatus) sdk.TaskStatus {
	var started time.Time
	if cs.StartedAt > 0 {
		started = time.Unix(0, cs.StartedAt)
	}
	finished := time.Now()
	if cs.FinishedAt > 0 {
		finished = time.Unix(0, cs.FinishedAt)
	}
	if started.IsZero() {
		// It never ran: its start failed inside the runtime.
		return sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(128, 0, sdk.ReasonStartError, cs.Message, time.Time{}, finished)}
	}
	return h.ended(cs.ExitCode, cs.Reason == sdk.ReasonOOMKilled, cs.Message, started, finished)
}

// exitReported is containerd's own report of a container's exit (see
// followContainerd), for the watch to act on.
func (h *handle) exitReported(ex taskExit) {
	h.exit.Store(&ex)
	h.nudge()
}

// ended builds a final status from an exit code (and a message from the
// runtime), between the start and the end.
func (h *handle) ended(code int32, oomKilled bool, msg string, started, finished time.Time) sdk.TaskStatus {
	reason := ""
	switch {
	case oomKilled:
		reason = sdk.ReasonOOMKilled
	case timedOut(h.task.Dir):
		reason = sdk.ReasonTaskTimeout
	}
	// CRI reports a container killed by a signal only as exit code
	// 128+signal, the shell's convention, so the signal is read back from
	// it: a task that exits with such a code of its own accord is reported
	// as killed by that signal.
	var signal int32
	if code > 128 && code <= 128+64 {
		signal = code - 128
	}
	// Containerd takes the start time once its start call returns, and the
	// exit time from the process: a task that exits at once can seem to
	// finish before it started.
	if finished.Before(started) {
		finished = started
	}
	if reason == "" && signal != 0 && !h.stopRequested.Load() && !timedOut(h.task.Dir) {
		// CRI does not say who killed a container: say who did not.
		if h.sandboxStopped.Load() {
			reason = reasonSandboxStopped
			msg = "the container runtime stopped the task's pod sandbox, and the container with it: a kubelet sharing the runtime does so to sandboxes of pods it does not know (run the executor in its pod with --pod-uid)"
		} else if msg == "" {
			msg = fmt.Sprintf("killed by signal %d, not stopped by the executor: by the task itself, the kernel, or another client of the container runtime", signal)
		}
	}
	return sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(code, signal, reason, msg, started, finished)}
}

// watch waits for the running container to exit, and stops it when its
// timeout comes.
func (h *handle) watch(ctx context.Context) {
	var timeout <-chan time.Time
	if t := h.task.Spec.TimeoutSeconds; t != nil && *t > 0 {
		st, _, _ := h.snapshot()
		if st.State.Running != nil {
			deadline := st.State.Running.StartedAt.Add(time.Duration(*t) * time.Second)
			timer := time.NewTimer(time.Until(deadline))
			defer timer.Stop()
			timeout = timer.C
		}
	}
	// A nudge can come before the CRI status shows the exit: containerd's
	// own exit event comes before containerd has deleted the task, which
	// the status waits for (tens of milliseconds), and containerd 1.6
	// sends no CRI event then. For an exit the event cannot settle (see
	// exitFromEvent), rather than wait for the next list, look again soon,
	// at growing intervals, for a while.
	var recheck <-chan time.Time
	var every, rechecked time.Duration
	for {
		if _, final, _ := h.snapshot(); final {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-h.exited:
			if h.exitFromEvent(ctx) {
				return
			}
			every, rechecked = recheckFirst, 0
		case <-recheck:
			rechecked += every
			every = min(2*every, recheckMax)
		case <-timeout:
			timeout = nil
			if err := markTimedOut(h.task.Dir); err != nil {
				h.d.log.Error("cannot record a task's timeout", "task", h.task.Name, "error", err)
			}
			h.d.log.Debug("task timed out; stopping it", "task", h.task.Name)
			if err := h.stopContainer(ctx, h.d.grace); err != nil {
				h.d.log.Warn("cannot stop a timed-out task", "task", h.task.Name, "error", err)
			}
		}
		if err := h.refresh(ctx); err != nil && ctx.Err() == nil {
			h.d.log.Warn("cannot read a container's status", "task", h.task.Name, "error", err)
		}
		recheck = nil
		if _, final, _ := h.snapshot(); !final && every > 0 && rechecked < recheckFor {
			recheck = time.After(every)
		}
	}
}

// After a nudge, the status is read again recheckFirst later, then at
// doubling intervals up to recheckMax, for recheckFor in all; the list
// (monitorInterval) and the events take over after that.
const (
	recheckFirst = 2 * time.Millisecond
	recheckMax   = 50 * time.Millisecond
	recheckFor   = 2 * time.Second
)

// refresh asks containerd for the container's status and applies it.
func (h *handle) refresh(ctx context.Context) error {
	h.mu.Lock()
	id := h.containerID
	h.mu.Unlock()
	cs, err := h.d.cri.containerStatus(ctx, id)
	if err != nil {
		return err
	}
	if cs == nil {
		// Removed behind our back: its exit code is gone with it.
		h.finish(sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(137, 0, sdk.ReasonStatusUnknown,
			"the container was removed from the container runtime", time.Time{}, time.Now())})
		return nil
	}
	if cs.State == cri.ContainerState_CONTAINER_EXITED && cs.ExitCode == 137 && cs.Reason != sdk.ReasonOOMKilled {
		// containerd learns of an OOM kill from an event of its own, which
		// can come just after the exit (seen under load), and a sandbox
		// being stopped shows as such only once its containers are: a
		// final status never changes, so look once more a moment later.
		select {
		case <-time.After(oomSettle):
		case <-ctx.Done():
			return ctx.Err()
		}
		if again, err := h.d.cri.containerStatus(ctx, id); err == nil && again != nil {
			cs = again
		}
	}
	if cs.State == cri.ContainerState_CONTAINER_EXITED && cs.ExitCode > 128 && cs.Reason != sdk.ReasonOOMKilled &&
		!h.stopRequested.Load() && !timedOut(h.task.Dir) {
		h.sandboxStopped.Store(h.sandboxStopping(ctx))
	}
	h.observe(ctx, cs)
	return nil
}

// oomSettle is how long a container killed by SIGKILL is given for
// containerd to mark it OOM-killed.
const oomSettle = 200 * time.Millisecond

// sandboxSettle bounds how long a container killed by a signal no one here
// sent waits to be explained by its sandbox's stop: the runtime stops a
// sandbox's containers first and the sandbox after.
const sandboxSettle = time.Second

// sandboxStopping reports whether the container's sandbox is, or within
// sandboxSettle becomes, not ready.
func (h *handle) sandboxStopping(ctx context.Context) bool {
	deadline := time.Now().Add(sandboxSettle)
	for h.d.place.sandboxReady(ctx, h) {
		if time.Now().After(deadline) || !sleep(ctx, 100*time.Millisecond) {
			return false
		}
	}
	return true
}

// stopContainer stops the container: SIGTERM, SIGKILL after grace (CRI
// counts it in whole seconds, so it is rounded up).
func (h *handle) stopContainer(ctx context.Context, grace time.Duration) error {
	h.mu.Lock()
	id := h.containerID
	h.mu.Unlock()
	if id == "" {
		return nil
	}
	secs := int64((grace + time.Second - 1) / time.Second)
	if _, err := h.d.cri.rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: id, Timeout: secs}); err != nil && !isNotFound(err) {
		return fmt.Errorf("while stopping container %s: %w", id, err)
	}
	return nil
}

// stop stops the task and returns once it has terminated.
func (h *handle) stop(ctx context.Context, grace time.Duration) error {
	if _, final, _ := h.snapshot(); final {
		return nil
	}
	// From here on this goroutine alone acts on the task; if it gives up
	// half-way, the run goroutine takes over again.
	h.halt()
	defer func() {
		if _, final, _ := h.snapshot(); !final {
			h.start()
		}
	}()
	ctrs, err := h.d.cri.containers(ctx, h.d.selector(h.task.Name, h.attempt))
	if err != nil {
		return err
	}
	if len(ctrs) == 0 {
		st, _, _ := h.snapshot()
		msg := "stopped before its container was created"
		if w := st.State.Waiting; w != nil && w.Message != "" {
			msg += " (" + w.Reason + ": " + w.Message + ")"
		}
		h.finish(sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(143, 15, sdk.ReasonFailed, msg, time.Time{}, time.Now())})
		return nil
	}
	h.mu.Lock()
	h.containerID = ctrs[0].Id
	h.mu.Unlock()
	h.stopRequested.Store(true)
	if err := h.stopContainer(ctx, grace); err != nil {
		return err
	}
	cs, err := h.d.cri.containerStatus(ctx, ctrs[0].Id)
	if err != nil {
		return err
	}
	if cs != nil && cs.State == cri.ContainerState_CONTAINER_CREATED {
		h.finish(sdk.TaskStatus{Name: h.task.Name, State: sdk.Terminated(143, 15, sdk.ReasonFailed,
			"stopped before its container was started", time.Time{}, time.Now())})
		return nil
	}
	if err := h.refresh(ctx); err != nil {
		return err
	}
	if _, final, _ := h.snapshot(); !final {
		return fmt.Errorf("container %s still runs after it was stopped", ctrs[0].Id)
	}
	return nil
}

// running reports whether the monitor should watch the handle's container.
func (h *handle) running() (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.containerID, !h.final && h.st.State.Running != nil && h.containerID != ""
}

// nudge tells the run goroutine to look at the container.
func (h *handle) nudge() {
	select {
	case h.exited <- struct{}{}:
	default:
	}
}
