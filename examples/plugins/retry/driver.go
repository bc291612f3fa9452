package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// defaultGrace is the grace period when the host does not set one.
const defaultGrace = 10 * time.Second

// adoptPoll is how often Start and Recover look again at a supervisor that
// runs but has not recorded its first attempt yet (it was launched just
// before the previous plugin process died).
const adoptPoll = 10 * time.Millisecond

// Driver is the retry runtime: an sdk.Runtime for process tasks whose
// command is run again after a failure, as the task's env asks.
type Driver struct {
	log    hclog.Logger
	events sdk.Publisher
	grace  time.Duration
	// exe is this executable, which supervises tasks too.
	exe string
	// env is the base of every task's environment.
	env []string

	// handles are the tasks this plugin process tracks.
	handles sdk.Handles[*handle]
}

// NewDriver returns a driver that logs to log.
func NewDriver(log hclog.Logger) *Driver {
	return &Driver{log: log}
}

// Init reads the host's settings.
func (d *Driver) Init(_ context.Context, cfg sdk.Config) (sdk.Info, error) {
	d.grace = defaultGrace
	if v := cfg.Settings[sdk.SettingGracePeriod]; v != "" {
		g, err := time.ParseDuration(v)
		if err != nil {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: %w", sdk.SettingGracePeriod, v, err)
		}
		d.grace = g
	}
	exe, err := os.Executable()
	if err != nil {
		return sdk.Info{}, fmt.Errorf("while locating the plugin executable: %w", err)
	}
	d.exe = exe
	d.env = baseEnv()
	d.log.Debug("initialised", "grace", d.grace.String())
	return sdk.Info{Name: name, Version: version, Kinds: []sdk.Kind{sdk.KindProcess}, RuntimeOptions: true}, nil
}

// baseEnv is the plugin's environment (the host's) minus what go-plugin and
// the host set for the plugin itself: a task that saw the handshake cookie
// could be taken for a plugin.
func baseEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "PLUGIN_") || strings.HasPrefix(k, "TASK_EXECUTOR_") || k == sdk.Handshake.MagicCookieKey {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// Validate accepts process specs with a command, plain env values, an
// absolute working directory and a well-formed retry policy (its runtime
// options).
func (d *Driver) Validate(_ context.Context, spec sdk.TaskSpec) error {
	p := spec.Process
	if p == nil {
		return fmt.Errorf("the %s runtime runs only process tasks: %w", name, sdk.ErrInvalidSpec)
	}
	if len(p.Command) == 0 || p.Command[0] == "" {
		return fmt.Errorf("process.command is empty: %w", sdk.ErrInvalidSpec)
	}
	if p.WorkingDir != "" && !filepath.IsAbs(p.WorkingDir) {
		return fmt.Errorf("process.workingDir %q is not absolute: %w", p.WorkingDir, sdk.ErrInvalidSpec)
	}
	for _, e := range p.Env {
		if e.ValueFrom != nil {
			return fmt.Errorf("env %q: valueFrom is not supported: %w", e.Name, sdk.ErrInvalidSpec)
		}
	}
	_, err := parseOptions(spec)
	return err
}

// Start starts a task under a new supervisor, or finds the supervisor an
// earlier call (of this plugin process or of one before it) started.
func (d *Driver) Start(ctx context.Context, task sdk.Task) (sdk.TaskStatus, error) {
	if err := d.Validate(ctx, task.Spec); err != nil {
		return sdk.TaskStatus{}, err
	}
	h, existed := d.track(task)
	if existed {
		return d.await(ctx, h)
	}
	found, err := d.adopt(ctx, h)
	if err == nil && !found {
		err = d.launch(ctx, h)
	}
	if err != nil {
		d.forget(h)
		h.fail(err)
		return sdk.TaskStatus{}, fmt.Errorf("while starting task %q: %w", task.Name, err)
	}
	st, _ := h.snapshot()
	return st, nil
}

// track returns the handle of a task, making one if there is none yet;
// existed tells which.
func (d *Driver) track(task sdk.Task) (h *handle, existed bool) {
	h, added := d.handles.GetOrAdd(task.Name, func() *handle { return newHandle(task) })
	return h, !added
}

// adopt looks for a supervisor launched for h's task before: found is
// false if there was none, and the task was never started.
func (d *Driver) adopt(ctx context.Context, h *handle) (found bool, err error) {
	lock, err := openLock(h.task.Dir)
	if err != nil {
		return false, err
	}
	defer unlock(lock)
	for {
		held, err := tryLock(lock)
		if err != nil {
			return false, err
		}
		if !held {
			// No supervisor runs: whatever it recorded is all there is.
			if _, found, err := readRecord(h.task.Dir); err == nil && !found {
				return false, nil
			}
			h.settle(finalRecord(h.task, d.log))
			return true, nil
		}
		rec, found, err := readRecord(h.task.Dir)
		if err != nil {
			return false, err
		}
		if found {
			d.log.Debug("adopted a running task", "task", h.task.Name, "supervisor", rec.SupervisorPID)
			h.settle(rec)
			go h.watch(&d.events, d.log)
			return true, nil
		}
		// Launched, and about to record its first attempt.
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("while waiting for a task's supervisor to record its start: %w", ctx.Err())
		case <-time.After(adoptPoll):
		}
	}
}

// launch starts a supervisor for h's task and waits until it has started
// the first attempt, or found that it cannot.
func (d *Driver) launch(ctx context.Context, h *handle) error {
	task := h.task
	p := task.Spec.Process
	opts, err := parseOptions(task.Spec)
	if err != nil {
		return err
	}
	j := job{
		Argv:    p.Argv(),
		Env:     dedupEnv(d.env, p),
		Dir:     p.WorkingDir,
		Stdout:  filepath.Join(task.Dir, sdk.StdoutLog),
		Stderr:  filepath.Join(task.Dir, sdk.StderrLog),
		Options: opts,
		Grace:   d.grace,
	}
	if j.Dir == "" {
		j.Dir = task.Dir
	}
	if p.TimeoutSeconds != nil && *p.TimeoutSeconds > 0 {
		j.Timeout = time.Duration(*p.TimeoutSeconds) * time.Second
	}

	// The lock is taken here and handed to the supervisor, so that there is
	// no moment in which a launched task looks like one never started.
	lock, err := openLock(task.Dir)
	if err != nil {
		return err
	}
	handedOver := false
	defer func() {
		// Once the supervisor shares the lock, unlocking would release
		// it for the supervisor too: only our descriptor goes.
		if handedOver {
			lock.Close()
		} else {
			unlock(lock)
		}
	}()
	if held, err := tryLock(lock); err != nil {
		return err
	} else if held {
		return fmt.Errorf("a supervisor already runs for the task")
	}
	if err := writeJSON(filepath.Join(task.Dir, jobFile), j); err != nil {
		return err
	}
	hsR, hsW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("while creating the handshake pipe: %w", err)
	}
	defer hsR.Close()
	logf, err := os.OpenFile(filepath.Join(task.Dir, logFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		hsW.Close()
		return fmt.Errorf("while opening the supervisor's log: %w", err)
	}
	cmd := exec.Command(d.exe, supervisorArg, task.Dir)
	cmd.Env = d.env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lock, hsW} // lockFD, handshakeFD
	// A session of its own: the supervisor and its task outlive the
	// plugin, and signals meant for the plugin's group miss them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	hsW.Close()
	logf.Close()
	if err != nil {
		return fmt.Errorf("while starting the task's supervisor: %w", err)
	}
	handedOver = true
	// Reaps the supervisor if it ends while this plugin process lives; the
	// exit itself is learnt from the lock.
	go func() { _ = cmd.Wait() }()

	// The supervisor closes its end once it has recorded the first attempt,
	// or when it dies.
	stop := context.AfterFunc(ctx, func() { _ = hsR.SetReadDeadline(time.Unix(1, 0)) })
	_, _ = io.Copy(io.Discard, hsR)
	stop()
	if ctx.Err() != nil {
		// The supervisor runs on; a retried Start adopts it.
		return fmt.Errorf("while waiting for the task's supervisor: %w", ctx.Err())
	}
	rec, found, err := readRecord(task.Dir)
	switch {
	case err != nil:
		return err
	case !found:
		return fmt.Errorf("the task's supervisor exited before starting the task; see %s", filepath.Join(task.Dir, logFile))
	}
	h.settle(rec)
	if rec.Result == nil {
		go h.watch(&d.events, d.log)
	}
	d.log.Debug("started a task", "task", task.Name, "supervisor", rec.SupervisorPID, "maxAttempts", opts.MaxAttempts)
	return nil
}

// dedupEnv is base with the task's env on top: the last value of each
// variable wins, in first-seen order.
func dedupEnv(base []string, p *sdk.ProcessSpec) []string {
	env := append([]string(nil), base...)
	for _, e := range p.Env {
		env = append(env, e.Name+"="+e.Value)
	}
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

// await waits until another call has launched or adopted h.
func (d *Driver) await(ctx context.Context, h *handle) (sdk.TaskStatus, error) {
	select {
	case <-h.ready:
		return h.snapshot()
	case <-ctx.Done():
		return sdk.TaskStatus{}, ctx.Err()
	}
}

func (d *Driver) forget(h *handle) { d.handles.Remove(h.task.Name, h) }

func (d *Driver) lookup(name string) (*handle, error) {
	h, ok := d.handles.Get(name)
	if !ok {
		return nil, fmt.Errorf("task %q: %w", name, sdk.ErrNotFound)
	}
	return h, nil
}

// Stop asks the task's supervisor to stop it (no more attempts; SIGTERM to
// the running one, SIGKILL after grace) and waits until it has terminated.
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
	if err := requestStop(h.task.Dir, grace); err != nil {
		return fmt.Errorf("while stopping task %q: %w", name, err)
	}
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("while waiting for task %q to stop: %w", name, ctx.Err())
	}
}

// requestStop appends a stop request to the supervisor's request file. No
// file means no supervisor was ever started for the task: there is nothing
// to stop.
func requestStop(dir string, grace time.Duration) error {
	f, err := os.OpenFile(filepath.Join(dir, stopFile), os.O_WRONLY|os.O_APPEND, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("while opening the supervisor's stop requests: %w", err)
	}
	defer f.Close()
	// One short append lands whole, so requests never interleave.
	if _, err := fmt.Fprintf(f, "stop %d\n", max(grace, 0)); err != nil {
		return fmt.Errorf("while sending a stop request: %w", err)
	}
	return nil
}

// Remove forgets a terminated task, stopping it at once first if it is
// not: nothing of a task may outlive its directory.
func (d *Driver) Remove(ctx context.Context, name string) error {
	h, err := d.lookup(name)
	if errors.Is(err, sdk.ErrNotFound) {
		return nil
	}
	if !h.terminated() {
		if err := d.Stop(ctx, name, 0); err != nil {
			return err
		}
	}
	d.forget(h)
	return nil
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

// Recover adopts the supervisors of tasks started before this plugin
// process. A task that cannot be looked at is an error, not left out: left
// out, the host would start it a second time.
func (d *Driver) Recover(ctx context.Context, tasks []sdk.Task) ([]sdk.TaskStatus, error) {
	out := make([]sdk.TaskStatus, 0, len(tasks))
	for _, task := range tasks {
		h, existed := d.track(task)
		if existed {
			st, err := d.await(ctx, h)
			if err != nil {
				return nil, err
			}
			out = append(out, st)
			continue
		}
		found, err := d.adopt(ctx, h)
		if err != nil || !found {
			d.forget(h)
			h.fail(fmt.Errorf("task %q was never started: %w", task.Name, sdk.ErrNotFound))
		}
		if err != nil {
			return nil, fmt.Errorf("while recovering task %q: %w", task.Name, err)
		}
		if found {
			st, _ := h.snapshot()
			out = append(out, st)
		}
	}
	return out, nil
}

// Events streams the task ends the driver observes.
func (d *Driver) Events(ctx context.Context) (<-chan sdk.TaskStatus, error) {
	return d.events.Subscribe(ctx), nil
}
