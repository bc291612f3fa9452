// Package shimdriver is a complete runtime for process tasks, each run under
// its own shim (package shim). A Placer decides where a task's process runs:
// on the host (plugins/process), or in another container's namespaces
// (plugins/nsenter). Everything a restart must not lose is in the shims and
// their files, so the plugin process can be killed at any moment.
//
// The driver, one handle per task that owns the goroutine waiting for it,
// and the recoverable state are in driver.go, handle.go and state.go.
package shimdriver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/shim"
)

// defaultGrace is the grace period when the host does not set one.
const defaultGrace = 10 * time.Second

// spareShims is how many shims the driver keeps started ahead of time: a
// task's start then does not wait for a new shim process to start up. A
// burst of starts beyond it starts shims on the spot.
const spareShims = 4

// retryInterval is how often a task that cannot start yet asks its Placer
// again.
const retryInterval = 200 * time.Millisecond

// Options configure a driver.
type Options struct {
	// Name is the runtime's name.
	Name string
	// Version is the plugin's version.
	Version string
	// Log is the plugin's logger.
	Log hclog.Logger
	// Placer decides where tasks run.
	Placer Placer
	// TaskCgroups gives each task a cgroup of its own (its resources'
	// limits, usage and the kill of all it started), made under the
	// plugin's own cgroup or the host's SettingCgroupParent, as the host's
	// SettingTaskCgroups says. A task whose Place names cgroups (another
	// container's) runs in those instead.
	TaskCgroups bool
	// ValidateSpec, when set, checks a process spec beyond the driver's
	// own checks, in particular its runtime options: the runtime then takes
	// options (sdk.Info.RuntimeOptions) and the host asks it to validate
	// every spec (sdk.Info.NoValidate is false), so what it refuses is the
	// client's 400 at create time. Return an error wrapping
	// sdk.ErrInvalidSpec for a bad spec; refuse options you do not know.
	// Without it the driver refuses every runtime option, and the host,
	// whose checks are then the driver's, does not ask it (NoValidate).
	ValidateSpec func(ctx context.Context, spec sdk.TaskSpec) error
}

// Driver is an sdk.Runtime for process tasks.
type Driver struct {
	opts   Options
	log    hclog.Logger
	events sdk.Publisher
	shims  *shim.Launcher
	grace  time.Duration
	maxLog int64
	cg     *taskCgroups // nil: tasks get no cgroups of their own

	handles sdk.Handles[*handle]
}

// New returns a driver.
func New(opts Options) *Driver {
	return &Driver{opts: opts, log: opts.Log}
}

// Init reads the host's settings, finds the shim and initialises the
// Placer.
func (d *Driver) Init(ctx context.Context, cfg sdk.Config) (sdk.Info, error) {
	d.grace = defaultGrace
	if v := cfg.Settings[sdk.SettingGracePeriod]; v != "" {
		g, err := time.ParseDuration(v)
		if err != nil {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: %w", sdk.SettingGracePeriod, v, err)
		}
		d.grace = g
	}
	if v := cfg.Settings[sdk.SettingMaxLogBytes]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: not a byte count", sdk.SettingMaxLogBytes, v)
		}
		d.maxLog = n
	}
	path, err := FindShim()
	if err != nil {
		return sdk.Info{}, err
	}
	if err := d.opts.Placer.Init(cfg); err != nil {
		return sdk.Info{}, err
	}
	cg, cgWarnings, err := newTaskCgroups(cfg, d.opts.Name, d.opts.TaskCgroups, d.log)
	if err != nil {
		return sdk.Info{}, err
	}
	d.cg = cg
	var launcherOpts shim.LauncherOptions
	if d.cg != nil && d.cg.mgr != nil && d.cg.mgr.CanAdopt() {
		// Spare shims wait in spare cgroups, which starts adopt.
		if err := d.cg.mgr.RemoveSpares(ctx); err != nil {
			d.log.Warn("cannot remove the spare cgroups of an earlier plugin process", "error", err)
		}
		launcherOpts = shim.LauncherOptions{Prepare: d.cg.prepare, Discard: d.cg.discard}
	}
	d.shims = shim.NewLauncherWith(path, spareShims, launcherOpts)
	d.log.Debug("initialised", "shim", path, "grace", d.grace.String(), "cgroups", d.cg != nil && d.cg.mgr != nil)
	// Without ValidateSpec, Validate refuses only what the host refuses
	// too (see the HTTP API's checks), so the host need not ask.
	custom := d.opts.ValidateSpec != nil
	info := sdk.Info{Name: d.opts.Name, Version: d.opts.Version, Kinds: []sdk.Kind{sdk.KindProcess}, NoValidate: !custom, RuntimeOptions: custom}
	if w, ok := d.opts.Placer.(Warner); ok {
		info.Warnings = w.Warnings()
	}
	info.Warnings = append(info.Warnings, cgWarnings...)
	return info, nil
}

// FindShim locates the task-executor-shim executable: $TASK_EXECUTOR_SHIM
// (which a host sets to the shim it carries, /proc/self/fd/4), then beside
// the plugin or one directory up (plugins/myruntime finds
// task-executor-shim), then $PATH.
func FindShim() (string, error) {
	if p := os.Getenv("TASK_EXECUTOR_SHIM"); p != "" {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("task-executor-shim not found at %s ($TASK_EXECUTOR_SHIM): not an executable file", p)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		for _, p := range []string{filepath.Join(dir, "task-executor-shim"), filepath.Join(dir, "..", "task-executor-shim")} {
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return filepath.Clean(p), nil
			}
		}
	}
	p, err := exec.LookPath("task-executor-shim")
	if err != nil {
		return "", fmt.Errorf("task-executor-shim not found beside the plugin, one directory up, or in $PATH: %w", err)
	}
	return p, nil
}

// HostEnv is the environment tasks on the host start from: the plugin's own
// (the host's), minus what go-plugin and the host set for the plugin itself.
func HostEnv() []string {
	env := os.Environ()
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PLUGIN_") || strings.HasPrefix(k, "TASK_EXECUTOR_") || k == sdk.Handshake.MagicCookieKey {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Validate accepts process specs whose env has only plain values.
func (d *Driver) Validate(ctx context.Context, spec sdk.TaskSpec) error {
	if spec.Process == nil {
		return fmt.Errorf("the %s runtime runs only process tasks: %w", d.opts.Name, sdk.ErrInvalidSpec)
	}
	for _, e := range spec.Process.Env {
		if e.ValueFrom != nil {
			return fmt.Errorf("env %q: valueFrom is not supported for process tasks: %w", e.Name, sdk.ErrInvalidSpec)
		}
	}
	if err := sdk.ValidateResources("spec.process.resources", spec.Process.Resources); err != nil {
		return err
	}
	if d.opts.ValidateSpec == nil {
		if len(spec.RuntimeOptions) > 0 {
			return fmt.Errorf("the %s runtime takes no runtime options: %w", d.opts.Name, sdk.ErrInvalidSpec)
		}
		return nil
	}
	return d.opts.ValidateSpec(ctx, spec)
}

// Start starts a task, or, if its Placer says it cannot start yet, accepts
// it as waiting and starts it as soon as it can.
func (d *Driver) Start(ctx context.Context, task sdk.Task) (sdk.TaskStatus, error) {
	if err := d.Validate(ctx, task.Spec); err != nil {
		return sdk.TaskStatus{}, err
	}
	h, added := d.handles.GetOrAdd(task.Name, func() *handle { return d.newHandle(task) })
	if !added {
		return d.await(ctx, h)
	}

	res, err := d.launch(ctx, h)
	var nr *NotReady
	switch {
	case errors.As(err, &nr):
		h.wait(nr)
		go d.retry(h)
	case err != nil:
		d.forget(h)
		h.fail(err)
		h.release()
		return sdk.TaskStatus{}, fmt.Errorf("while starting task %q: %w", task.Name, err)
	default:
		h.settle(res, &d.events, d.log)
	}
	st, _ := h.snapshot()
	return st, nil
}

// launch places h's task and starts it under a shim, or finds the shim a
// previous plugin process started for it.
func (d *Driver) launch(ctx context.Context, h *handle) (shim.Result, error) {
	place, err := d.opts.Placer.Place(ctx, h.task)
	var se *StartError
	if errors.As(err, &se) {
		now := time.Now()
		return shim.Result{Exit: &shim.Exit{ExitCode: 128, Reason: shim.ReasonStartError, Message: se.Message, FinishedAt: now}}, nil
	}
	if err != nil {
		return shim.Result{}, err
	}
	defer place.Close()
	spec := d.shimSpec(h.task, place)
	if mgr := d.taskCgroups(place); mgr != nil {
		// The shim is in the task's cgroup before it starts the task,
		// which inherits it: the task never runs outside it.
		var opened []*os.File
		defer func() {
			for _, f := range opened {
				f.Close()
			}
		}()
		spec.Claim = func(prepared any, s *shim.Spec) error {
			g, procs, oom, err := d.cg.claim(ctx, mgr, h.task, prepared)
			opened = append(procs, oom)
			if err != nil {
				return &cgroupError{err}
			}
			h.group.Store(g)
			// Beside the Place's own cgroups, in the hierarchies the
			// task's cgroup is not in.
			s.Cgroups = append(s.Cgroups, procs...)
			if oom != nil {
				s.OOMCounter = oom
			}
			return nil
		}
	}
	res, err := d.shims.Launch(ctx, h.dir, spec)
	if cerr := (*cgroupError)(nil); errors.As(err, &cerr) {
		now := time.Now()
		return shim.Result{Exit: &shim.Exit{ExitCode: 128, Reason: shim.ReasonStartError, Message: cerr.Error(), FinishedAt: now}}, nil
	}
	if errors.Is(err, shim.ErrLaunched) {
		// A shim from before a plugin restart that was not followed by
		// Recover (the host retried a Start whose answer it never got).
		var found bool
		if res, found = d.inspect(ctx, h); found {
			return res, nil
		}
		// It ended before starting its task: start it now.
		res, err = d.shims.Launch(ctx, h.dir, spec)
	}
	return res, err
}

// retry starts a waiting task as soon as its Placer lets it, unless it is
// stopped first.
func (d *Driver) retry(h *handle) {
	t := time.NewTicker(retryInterval)
	defer t.Stop()
	for range t.C {
		h.launchMu.Lock()
		if h.terminated() {
			h.launchMu.Unlock()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		res, err := d.launch(ctx, h)
		cancel()
		var nr *NotReady
		switch {
		case errors.As(err, &nr):
			if h.wait(nr) {
				d.events.Publish(h.status())
			}
		case err != nil:
			d.log.Warn("cannot start a waiting task; retrying", "task", h.task.Name, "error", err)
		default:
			h.settle(res, &d.events, d.log)
			// A status no call returned: the host hears it here.
			d.events.Publish(h.status())
		}
		h.launchMu.Unlock()
		if err == nil {
			return
		}
	}
}

// await waits until another call has launched or recovered h.
func (d *Driver) await(ctx context.Context, h *handle) (sdk.TaskStatus, error) {
	select {
	case <-h.ready:
		return h.snapshot()
	case <-ctx.Done():
		return sdk.TaskStatus{}, ctx.Err()
	}
}

func (d *Driver) forget(h *handle) { d.handles.Remove(h.task.Name, h) }

func (d *Driver) shimSpec(task sdk.Task, place Place) shim.Spec {
	p := task.Spec.Process
	env := append([]string(nil), place.Env...)
	for _, e := range p.Env {
		env = append(env, e.Name+"="+e.Value)
	}
	spec := shim.Spec{
		Argv:        p.Argv(),
		Env:         dedupEnv(env),
		Dir:         p.WorkingDir,
		Stdout:      filepath.Join(task.Dir, sdk.StdoutLog),
		Stderr:      filepath.Join(task.Dir, sdk.StderrLog),
		Grace:       d.grace,
		MaxLogBytes: d.maxLog,

		Namespaces:     place.Namespaces,
		NamespaceFlags: place.NamespaceFlags,
		ContainerGone:  place.ContainerGone,
		Credentials:    place.Credentials,
		Cgroups:        place.Cgroups,
		OOMCounter:     place.OOMCounter,
		Wrap:           place.Wrap,
	}
	if p.WorkingDir == "" {
		spec.Dir = place.Dir
	}
	if p.TimeoutSeconds != nil && *p.TimeoutSeconds > 0 {
		spec.Timeout = time.Duration(*p.TimeoutSeconds) * time.Second
	}
	return spec
}

// dedupEnv keeps the last value of each variable, in first-seen order, so
// a task's env overrides the base environment.
func dedupEnv(env []string) []string {
	idx := make(map[string]int, len(env))
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

func (d *Driver) lookup(name string) (*handle, error) {
	h, ok := d.handles.Get(name)
	if !ok {
		return nil, fmt.Errorf("task %q: %w", name, sdk.ErrNotFound)
	}
	return h, nil
}

// Stop stops a task: through its shim if it runs, at once if it still
// waits to start.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	h, err := d.lookup(name)
	if err != nil {
		return err
	}
	if _, err := d.await(ctx, h); err != nil {
		return err
	}
	if h.terminated() {
		return nil
	}
	if h.cancel() {
		d.events.Publish(h.status())
		return nil
	}
	if err := shim.Stop(h.dir, grace); err != nil && !errors.Is(err, shim.ErrGone) {
		return fmt.Errorf("while stopping task %q: %w", name, err)
	}
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("while waiting for task %q to stop: %w", name, ctx.Err())
	}
}

// Remove forgets a terminated task (stopping it at once first if it is
// not) and removes its cgroup with anything still in it.
func (d *Driver) Remove(ctx context.Context, name string) error {
	h, err := d.lookup(name)
	if err == nil && !h.terminated() {
		// Remove is meant for terminated tasks; make sure nothing of the
		// task outlives its directory.
		if err := d.Stop(ctx, name, 0); err != nil {
			return err
		}
	}
	// A terminated task is not recovered after a plugin restart, so its
	// cgroup is found by name, handle or not.
	if d.cg != nil {
		d.cg.remove(ctx, d.cg.group(ctx, h, name, d.finder()))
	}
	// The shim writes its last records for a moment after the exit it
	// reported: once it is gone the host can remove the directory at once.
	if h != nil {
		wctx, cancel := context.WithTimeout(ctx, removeTimeout)
		err := shim.AwaitGone(wctx, h.dir)
		cancel()
		if err != nil {
			d.log.Warn("the task's shim is still there after its task ended", "task", name, "error", err)
		}
	}
	if h != nil {
		d.forget(h)
	}
	return nil
}

// newHandle returns a handle whose terminated state tells what the task
// used, when it has a cgroup.
func (d *Driver) newHandle(task sdk.Task) *handle {
	h := newHandle(task)
	if d.cg != nil {
		h.describeUsage = func() string {
			return d.cg.describe(d.cg.group(context.Background(), h, task.Name, d.finder()))
		}
	}
	return h
}

// finder is the Placer, if it finds its tasks' cgroups.
func (d *Driver) finder() CgroupFinder {
	f, _ := d.opts.Placer.(CgroupFinder)
	return f
}

// foundCgroups is a CgroupFinder's answer, kept for a batch of tasks.
type foundCgroups struct{ mgr *cgroups.Manager }

func (f foundCgroups) TaskCgroups(context.Context) (*cgroups.Manager, error) { return f.mgr, nil }

// taskCgroups is where a task placed at place gets its cgroup: where the
// Placer says, else (placed on the host, in no cgroup of the Placer's)
// the driver's own; nil for none.
func (d *Driver) taskCgroups(place Place) *cgroups.Manager {
	switch {
	case d.cg == nil:
		return nil
	case place.TaskCgroups != nil:
		return place.TaskCgroups
	case len(place.Cgroups) == 0:
		return d.cg.mgr
	}
	return nil
}

// Usage reports what tasks' cgroups counted (sdk.UsageReporter).
func (d *Driver) Usage(ctx context.Context, names []string) ([]sdk.TaskUsage, error) {
	if d.cg == nil {
		return nil, fmt.Errorf("tasks of the %s runtime have no cgroups here: %w", d.opts.Name, sdk.ErrUnsupported)
	}
	out := make([]sdk.TaskUsage, 0, len(names))
	finder := d.finder()
	if finder != nil {
		// Asked once for all: it looks for the main container.
		if mgr, err := finder.TaskCgroups(ctx); err == nil {
			finder = foundCgroups{mgr}
		}
	}
	for _, name := range names {
		h, _ := d.lookup(name)
		if u, ok := d.cg.usage(d.cg.group(ctx, h, name, finder)); ok {
			out = append(out, sdk.TaskUsage{Name: name, CPUSeconds: u.CPUSeconds, MemoryBytes: u.MemoryBytes, MemoryPeakBytes: u.MemoryPeakBytes})
		}
	}
	return out, nil
}

// Status returns a task's status.
func (d *Driver) Status(_ context.Context, name string) (sdk.TaskStatus, error) {
	h, err := d.lookup(name)
	if err != nil {
		return sdk.TaskStatus{}, err
	}
	select {
	case <-h.ready:
		return h.snapshot()
	default:
		return sdk.TaskStatus{Name: name, State: sdk.Waiting("ContainerCreating", "the task is being started")}, nil
	}
}

// List returns the status of every task the driver tracks.
func (d *Driver) List(_ context.Context) ([]sdk.TaskStatus, error) {
	hs := d.handles.All()
	out := make([]sdk.TaskStatus, 0, len(hs))
	for _, h := range hs {
		select {
		case <-h.ready:
			if st, err := h.snapshot(); err == nil {
				out = append(out, st)
			}
		default:
		}
	}
	return out, nil
}

// Recover finds the shims of tasks started before this plugin process.
func (d *Driver) Recover(ctx context.Context, tasks []sdk.Task) ([]sdk.TaskStatus, error) {
	out := make([]sdk.TaskStatus, 0, len(tasks))
	for _, task := range tasks {
		h, added := d.handles.GetOrAdd(task.Name, func() *handle { return d.newHandle(task) })
		if !added {
			if st, err := d.await(ctx, h); err == nil {
				out = append(out, st)
			}
			continue
		}
		res, found := d.inspect(ctx, h)
		if !found {
			d.forget(h)
			h.fail(fmt.Errorf("task %q was never started: %w", task.Name, sdk.ErrNotFound))
			continue
		}
		h.settle(res, &d.events, d.log)
		st, _ := h.snapshot()
		out = append(out, st)
	}
	return out, nil
}

// inspect looks for a shim launched for h before this plugin process
// started. found is false if there is none (the task was never started).
// A shim directory that cannot be read is reported as a task whose end is
// unknown rather than started again: a second copy of a task is worse than
// a lost status.
func (d *Driver) inspect(ctx context.Context, h *handle) (res shim.Result, found bool) {
	res, alive, err := shim.Inspect(ctx, h.dir)
	switch {
	case err == nil:
		d.log.Debug("found a task started earlier", "task", h.task.Name, "shimAlive", alive)
		return res, true
	case errors.Is(err, os.ErrNotExist), ctx.Err() != nil:
		// With ctx gone, Launch fails on the live shim's lock: the caller
		// gets an error and may retry.
		return shim.Result{}, false
	}
	d.log.Error("cannot read a task's shim state; reporting its end as unknown", "task", h.task.Name, "error", err)
	return shim.Result{Exit: &shim.Exit{
		ExitCode: 137, Reason: shim.ReasonStatusUnknown, FinishedAt: time.Now(),
		Message: fmt.Sprintf("cannot read the task's state: %v", err),
	}}, true
}

// Events streams the status changes the driver observes on its own.
func (d *Driver) Events(ctx context.Context) (<-chan sdk.TaskStatus, error) {
	return d.events.Subscribe(ctx), nil
}
