package tasks

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/opensandbox/task-executor/host/store"
	"github.com/opensandbox/task-executor/sdk"
)

// The requests that change the table: Create, Delete and Sync. None holds
// the manager's lock across a runtime's Validate or a write to the disk;
// they order themselves against each other on the names they touch: a
// name being created is reserved (Manager.reserved), a deletion being
// recorded is a stage of its task (delMarking), and a request that meets
// one waits for it to end, then looks again.

// resolveRuntime picks the runtime for a spec and checks it is installed
// and runs specs of that kind.
func (c *Manager) resolveRuntime(spec sdk.TaskSpec) (string, error) {
	kind := spec.Kind()
	if kind == sdk.KindContainer && !c.cfg.ContainerMode && spec.Runtime == "" && c.cfg.DefaultRuntimes[kind] == "" {
		return "", fmt.Errorf("container tasks need container mode: start the executor with --enable-container-mode (or ENABLE_CONTAINER_MODE=true): %w", ErrInvalid)
	}
	name := spec.Runtime
	if name == "process" && c.cfg.SidecarMode {
		return "", fmt.Errorf("runtime %q is off in sidecar mode: it would run the task in the executor's own container, with the executor's privileges, not in the main container: %w", name, ErrInvalid)
	}
	if name == "" {
		name = c.cfg.DefaultRuntime(kind)
	}
	installed := c.runtimes.Installed()
	var names []string
	for _, info := range installed {
		names = append(names, info.Name)
		if info.Name != name {
			continue
		}
		for _, k := range info.Kinds {
			if k == kind {
				return name, nil
			}
		}
		return "", fmt.Errorf("runtime %q does not run %s tasks: %w", name, kind, ErrInvalid)
	}
	if reason, ok := c.runtimes.Refused()[name]; ok {
		return "", fmt.Errorf("runtime %q is unavailable: its plugin was refused: %s: %w", name, reason, ErrInvalid)
	}
	// A runtime the executor has but cannot start is the node's problem,
	// not the client's: retry, and see why.
	if reason, ok := c.runtimes.Failing()[name]; ok {
		return "", fmt.Errorf("runtime %q cannot start: %s: %w", name, reason, ErrUnavailable)
	}
	sort.Strings(names)
	// A plugin that never came up is known by its file's name only, which
	// need not be its runtime's: say why it is down, since it may be the
	// one asked for.
	var down []string
	for file, why := range c.runtimes.Failing() {
		down = append(down, fmt.Sprintf("%s: %s", file, why))
	}
	if len(down) > 0 {
		sort.Strings(down)
		return "", fmt.Errorf("runtime %q is not installed (installed: %v; plugins that are not up, named by their files: %s): %w", name, names, strings.Join(down, "; "), ErrInvalid)
	}
	return "", fmt.Errorf("runtime %q is not installed (installed: %v): %w", name, names, ErrInvalid)
}

// admit resolves and validates a new task with its runtime.
func (c *Manager) admit(ctx context.Context, t NewTask, now time.Time) (store.Record, error) {
	name, err := c.resolveRuntime(t.Spec)
	if err != nil {
		return store.Record{}, fmt.Errorf("task %q: %w", t.Name, err)
	}
	info, rt, up := c.runtimes.Runtime(name)
	// Options are the runtime's to check, whatever it says of the rest.
	options := len(t.Spec.RuntimeOptions) > 0
	if !info.NoValidate || options {
		if !up {
			why := "it is restarting"
			if reason, ok := c.runtimes.Failing()[name]; ok {
				why = reason
			}
			return store.Record{}, fmt.Errorf("task %q: runtime %q is not running right now (%s); retry shortly: %w", t.Name, name, why, ErrUnavailable)
		}
		if options && !info.RuntimeOptions {
			return store.Record{}, fmt.Errorf("task %q: runtime %q takes no runtime options (spec.runtimeOptions): %w", t.Name, name, ErrInvalid)
		}
		// A reference that cannot be resolved is the task's StartError, not
		// the request's: the runtime checks the rest.
		spec, _ := resolveEnv(t.Spec, c.cfg.Downward)
		err := c.call(ctx, name, "Validate", validateTimeout, func(ctx context.Context) error { return rt.Validate(ctx, spec) })
		if err != nil {
			if errors.Is(err, sdk.ErrInvalidSpec) {
				return store.Record{}, fmt.Errorf("task %q: %v: %w", t.Name, err, ErrInvalid)
			}
			return store.Record{}, fmt.Errorf("task %q: runtime %q could not check the spec: %v: %w", t.Name, name, err, ErrUnavailable)
		}
	}
	return store.Record{
		Name: t.Name, Spec: t.Spec, Runtime: name, CreatedAt: now, Format: t.Format,
		State: sdk.Waiting(sdk.ReasonInitialized, ""),
	}, nil
}

// reserveLocked reserves name for a creation; release ends the
// reservation.
func (c *Manager) reserveLocked(name string) (release func()) {
	done := make(chan struct{})
	c.reserved[name] = done
	return func() {
		c.mu.Lock()
		if c.reserved[name] == done {
			delete(c.reserved, name)
		}
		c.mu.Unlock()
		close(done)
	}
}

// Create creates one task and returns it as it is once its creation is
// durable (running, or even terminated, if its runtime was quick).
func (c *Manager) Create(ctx context.Context, t NewTask) (Task, error) {
	c.mu.Lock()
	if _, ok := c.tasks[t.Name]; ok || c.reserved[t.Name] != nil {
		c.mu.Unlock()
		return Task{}, fmt.Errorf("task %q: %w", t.Name, ErrExists)
	}
	// Tasks being deleted count: their processes and files are still there.
	if n := len(c.tasks) + len(c.reserved); c.cfg.MaxTasks > 0 && n >= c.cfg.MaxTasks {
		c.mu.Unlock()
		return Task{}, fmt.Errorf("task %q: the executor already keeps %d tasks, its limit (--max-tasks); delete some first: %w", t.Name, n, ErrTooMany)
	}
	release := c.reserveLocked(t.Name)
	c.mu.Unlock()
	defer release()

	rec, err := c.admit(ctx, t, time.Now())
	if err != nil {
		return Task{}, err
	}
	commit, err := c.store.Create(rec)
	if err != nil {
		if errors.Is(err, store.ErrExists) {
			return Task{}, fmt.Errorf("task %q: %w", t.Name, ErrExists)
		}
		return Task{}, err
	}
	// The task starts while its record is made durable: the start does not
	// wait for the disk, the answer to the client does.
	c.mu.Lock()
	e := c.addLocked(rec, true)
	c.mu.Unlock()
	err = commit()
	c.mu.Lock()
	if err != nil {
		c.transition(e, event{kind: evCommitFailed})
	} else {
		c.transition(e, event{kind: evCommitted})
	}
	c.mu.Unlock()
	if err != nil {
		return Task{}, err
	}
	testHookCommitted(t.Name)
	// The task as it is now, as setTasks answers: a short task may have
	// run to its end while its record was made durable, and its creator
	// learns so without asking again.
	c.mu.Lock()
	v := e.view()
	c.mu.Unlock()
	return v, nil
}

// testHookCommitted lets tests act between a create's commit and its
// answer.
var testHookCommitted = func(string) {}

// addLocked puts a new task into the table; pending says its record is
// not durable yet (evCommitted or evCommitFailed follows).
func (c *Manager) addLocked(rec store.Record, pending bool) *entry {
	c.seq++
	e := &entry{rec: rec, seq: c.seq, ended: make(chan struct{})}
	c.tasks[rec.Name] = e
	c.transition(e, event{kind: evCreated, uncommitted: pending})
	return e
}

// waitFor returns once ch is closed, or with ctx's error, saying what it
// waited for.
func waitFor(ctx context.Context, ch <-chan struct{}, what string) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("while waiting for %s: %w", what, ctx.Err())
	}
}

// busy returns what a request touching e must wait for first: its
// creation being made durable, or its deletion being recorded.
func busy(e *entry) (<-chan struct{}, string) {
	if e.durable != nil {
		select {
		case <-e.durable:
		default:
			return e.durable, fmt.Sprintf("the creation of task %q", e.rec.Name)
		}
	}
	if e.del == delMarking {
		return e.marked, fmt.Sprintf("the deletion of task %q", e.rec.Name)
	}
	return nil, ""
}

// Delete accepts the deletion of a task; the task is stopped and removed in
// the background. grace nil means the default grace period. Deleting a task
// that is already being deleted is not an error.
func (c *Manager) Delete(ctx context.Context, name string, grace *time.Duration) error {
	c.mu.Lock()
	for {
		e, ok := c.tasks[name]
		if !ok {
			c.mu.Unlock()
			return fmt.Errorf("task %q: %w", name, ErrNotFound)
		}
		// A deletion being recorded by another request is waited for: it
		// may yet fail, and this request must not be acknowledged before
		// the deletion is durable.
		if ch, what := busy(e); ch != nil {
			c.mu.Unlock()
			if err := waitFor(ctx, ch, what); err != nil {
				return err
			}
			c.mu.Lock()
			continue
		}
		if e.del != delNone {
			c.mu.Unlock()
			return nil
		}
		c.transition(e, event{kind: evMarking})
		c.mu.Unlock()

		d := c.deletion(name, grace, time.Now())
		err := c.store.MarkDeleted(d)
		c.mu.Lock()
		defer c.mu.Unlock()
		if err != nil {
			c.transition(e, event{kind: evMarkFailed})
			return fmt.Errorf("while recording the deletion of task %q: %w", name, err)
		}
		c.transition(e, event{kind: evMarked, deletion: d})
		return nil
	}
}

// deletion describes a deletion of name accepted at now.
func (c *Manager) deletion(name string, grace *time.Duration, now time.Time) store.Deletion {
	g := c.cfg.GracePeriod
	if grace != nil {
		g = *grace
	}
	return store.Deletion{Name: name, At: now, GracePeriod: g}
}

// syncPlan is what a setTasks changes.
type syncPlan struct {
	creates            []NewTask
	deletes            []*entry
	mismatched, agreed []*entry
}

// planLocked compares desired with the table. It returns a channel to wait
// for when a task it touches is in the middle of another request.
func (c *Manager) planLocked(desired []NewTask) (syncPlan, <-chan struct{}, string, error) {
	var p syncPlan
	want := make(map[string]bool, len(desired))
	for _, t := range desired {
		want[t.Name] = true
		if ch := c.reserved[t.Name]; ch != nil {
			return p, ch, fmt.Sprintf("the creation of task %q", t.Name), nil
		}
		e, ok := c.tasks[t.Name]
		if !ok {
			p.creates = append(p.creates, t)
			continue
		}
		if ch, what := busy(e); ch != nil {
			return p, ch, what, nil
		}
		if !specEqual(e.rec.Spec, t.Spec) {
			p.mismatched = append(p.mismatched, e)
			continue
		}
		if e.del != delNone {
			return p, nil, "", fmt.Errorf("task %q is being deleted; send it again once it is gone: %w", t.Name, ErrConflict)
		}
		p.agreed = append(p.agreed, e)
	}
	for name, e := range c.tasks {
		if want[name] {
			continue
		}
		// A deletion being recorded may yet fail: its outcome decides.
		if ch, what := busy(e); ch != nil {
			return p, ch, what, nil
		}
		if e.del == delNone {
			p.deletes = append(p.deletes, e)
		}
	}
	return p, nil, "", nil
}

// Sync makes the set of tasks equal to desired: names not in it are
// deleted, new names are created, names with an identical spec are left
// alone. A name listed with another spec than its task has keeps its task
// as it is, and the task says so (Task.Message), as a controller that
// resends its whole list on every reconcile must not be blocked by one
// changed template. It changes nothing if a desired task is being deleted
// or cannot be admitted.
func (c *Manager) Sync(ctx context.Context, desired []NewTask) ([]Task, error) {
	// The set asked for is what the executor keeps afterwards, besides the
	// tasks on their way out.
	if c.cfg.MaxTasks > 0 && len(desired) > c.cfg.MaxTasks {
		return nil, fmt.Errorf("setTasks lists %d tasks, more than the executor's limit of %d (--max-tasks): %w", len(desired), c.cfg.MaxTasks, ErrTooMany)
	}
	now := time.Now()
	// The new tasks are admitted (their runtimes' Validate) before
	// anything is claimed, with no lock held; a plan that changed
	// meanwhile admits what it has not yet.
	admitted := map[string]store.Record{}
	var p syncPlan
	var seen []*entry
	var releases []func()
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	for {
		c.mu.Lock()
		var wait <-chan struct{}
		var what string
		var err error
		p, wait, what, err = c.planLocked(desired)
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
		if wait != nil {
			c.mu.Unlock()
			if err := waitFor(ctx, wait, what); err != nil {
				return nil, err
			}
			continue
		}
		var todo []NewTask
		for _, t := range p.creates {
			if r, ok := admitted[t.Name]; !ok || !specEqual(r.Spec, t.Spec) {
				todo = append(todo, t)
			}
		}
		if len(todo) == 0 {
			// The setTasks takes place here: it answers the tasks as they
			// are now, with its own changes, and not a task a concurrent
			// create adds later.
			for _, e := range c.tasks {
				seen = append(seen, e)
			}
			// Claim what the plan touches.
			for _, t := range p.creates {
				releases = append(releases, c.reserveLocked(t.Name))
			}
			for _, e := range p.deletes {
				c.transition(e, event{kind: evMarking})
			}
			c.mu.Unlock()
			break
		}
		c.mu.Unlock()
		for _, t := range todo {
			rec, err := c.admit(ctx, t, now)
			if err != nil {
				return nil, err
			}
			admitted[t.Name] = rec
		}
	}

	recs := make([]store.Record, 0, len(p.creates))
	for _, t := range p.creates {
		recs = append(recs, admitted[t.Name])
	}
	marks := make([]store.Deletion, len(p.deletes))
	for i, e := range p.deletes {
		marks[i] = c.deletion(e.rec.Name, nil, now)
	}
	if err := c.commitSync(recs, marks); err != nil {
		c.mu.Lock()
		for _, e := range p.deletes {
			c.transition(e, event{kind: evMarkFailed})
		}
		c.mu.Unlock()
		return nil, err
	}

	c.mu.Lock()
	for i, e := range p.deletes {
		c.transition(e, event{kind: evMarked, deletion: marks[i]})
	}
	for _, r := range recs {
		seen = append(seen, c.addLocked(r, false))
	}
	for _, e := range p.mismatched {
		c.transition(e, event{kind: evSpecMismatch, msg: "setTasks listed this task with another spec than it was created with (" + now.UTC().Format(time.RFC3339) +
			"); it keeps running as created: delete it (or leave it out of setTasks) to replace it"})
	}
	for _, e := range p.agreed {
		c.transition(e, event{kind: evSpecAgreed})
	}
	out := make([]Task, len(seen))
	for i, e := range seen {
		out[i] = e.view()
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// commitSync makes a setTasks durable: its creates, then its deletions;
// when any of it fails, it takes back what reached the disk, so the
// request changes nothing.
func (c *Manager) commitSync(recs []store.Record, marks []store.Deletion) error {
	undoCreates := func() {
		for _, r := range recs {
			_ = c.store.Remove(r.Name)
		}
	}
	if len(recs) > 0 {
		commit, err := c.store.Create(recs...)
		if err != nil {
			return err
		}
		if err := commit(); err != nil {
			undoCreates()
			return err
		}
	}
	if err := c.store.MarkDeleted(marks...); err != nil {
		undoCreates()
		names := make([]string, len(marks))
		for i, d := range marks {
			names[i] = d.Name
		}
		if uerr := c.store.UnmarkDeleted(names...); uerr != nil {
			c.log.Error("cannot take back deletion marks; those tasks will be deleted at the next start", "error", uerr)
		}
		return fmt.Errorf("while recording deletions: %w", err)
	}
	return nil
}
