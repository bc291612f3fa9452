package shimdriver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
)

// removeTimeout bounds the kill and removal of a task's cgroup at Remove.
const removeTimeout = 10 * time.Second

// taskCgroups gives each task a cgroup of its own, as the kubelet gives
// each container one: its limits, the count of what it used, and a kill of
// everything it started however it detached. Tasks placed on the host get
// theirs from mgr; a Placer may name another Manager for its tasks
// (Place.TaskCgroups).
type taskCgroups struct {
	mgr      *cgroups.Manager    // nil: none for tasks placed on the host
	defaults corev1.ResourceList // limits of a task that sets none
	log      hclog.Logger
}

// newTaskCgroups reads the host's settings; nil when the operator turned
// task cgroups off. With own, it makes the Manager of tasks placed on the
// host: where it cannot, it returns a warning, or an error if the operator
// required cgroups.
func newTaskCgroups(cfg sdk.Config, runtime string, own bool, log hclog.Logger) (*taskCgroups, []string, error) {
	mode := cfg.Settings[sdk.SettingTaskCgroups]
	switch mode {
	case "off":
		return nil, nil, nil
	case "", "auto", "required":
	default:
		return nil, nil, fmt.Errorf("while reading setting %s=%q: want auto, required or off", sdk.SettingTaskCgroups, mode)
	}
	c := &taskCgroups{defaults: corev1.ResourceList{}, log: log}
	for name, key := range map[corev1.ResourceName]string{corev1.ResourceCPU: sdk.SettingDefaultTaskCPU, corev1.ResourceMemory: sdk.SettingDefaultTaskMemory} {
		v := cfg.Settings[key]
		if v == "" {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil || q.Sign() <= 0 {
			return nil, nil, fmt.Errorf("while reading setting %s=%q: not a positive quantity", key, v)
		}
		c.defaults[name] = q
	}
	if !own {
		return c, nil, nil
	}
	// Each runtime of an executor has a parent of its own: their spares
	// and task cgroups are never each other's.
	parent := cfg.Settings[sdk.SettingCgroupParent]
	if parent != "" {
		parent = path.Join(parent, runtime)
	}
	mgr, err := cgroups.New(parent, CgroupID(cfg.DataDir, runtime))
	if err != nil {
		if mode == "required" {
			return nil, nil, fmt.Errorf("while preparing task cgroups (required by the operator): %w", err)
		}
		return c, []string{fmt.Sprintf("tasks run without cgroups of their own, so without resource limits, usage figures or the kill of what they leave behind: %v", err)}, nil
	}
	c.mgr = mgr
	return c, mgr.Warnings(), nil
}

// CgroupID is what tells apart, in one parent cgroup, the task cgroups of
// runtimes and of executors on different data directories (several
// executors in one pod, or tests): a driver of runtime on dataDir makes
// them in task-executor-ID (see cgroups.New), ID ending in "-"+runtime.
func CgroupID(dataDir, runtime string) string {
	sum := sha256.Sum256([]byte(dataDir))
	return hex.EncodeToString(sum[:])[:12] + "-" + runtime
}

// limits are a task's limits, with the operator's defaults where it sets
// none (skipped where its request is above the default: the task asked
// for more than the default would give it).
func (c *taskCgroups) limits(p *sdk.ProcessSpec) cgroups.Limits {
	var r corev1.ResourceRequirements
	if p.Resources != nil {
		r = *p.Resources.DeepCopy()
	}
	for name, q := range c.defaults {
		if _, ok := r.Limits[name]; ok {
			continue
		}
		if req, ok := r.Requests[name]; ok && req.Cmp(q) > 0 {
			continue
		}
		if r.Limits == nil {
			r.Limits = corev1.ResourceList{}
		}
		r.Limits[name] = q
	}
	return cgroups.LimitsFor(r)
}

// cgroupError is a task's cgroup that cannot be made: the task ends as a
// StartError saying so, rather than run without its limits.
type cgroupError struct{ err error }

func (e *cgroupError) Error() string { return e.err.Error() }
func (e *cgroupError) Unwrap() error { return e.err }

// prepare makes a spare cgroup for a spare shim to join
// (shim.LauncherOptions). A spare has the limits of a task without
// resources: the most common kind has nothing written at its start.
func (c *taskCgroups) prepare() (any, []*os.File, error) {
	g, join, err := c.mgr.Spare(c.limits(&sdk.ProcessSpec{}))
	if err != nil {
		return nil, nil, err
	}
	return g, join, nil
}

// discard removes the spare cgroup of a shim that ran no task.
func (c *taskCgroups) discard(prepared any) {
	if g, ok := prepared.(*cgroups.Group); ok {
		ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
		defer cancel()
		if err := g.Remove(ctx); err != nil {
			c.log.Warn("cannot remove a spare cgroup", "dirs", g.Dirs(), "error", err)
		}
	}
}

// claim gives task its cgroup in mgr: the shim's spare cgroup (prepared,
// from c.mgr), renamed for the task, or one made now, whose join files
// the shim then joins through. It returns the group, those
// files (none for a spare) and the file counting the cgroup's OOM kills.
func (c *taskCgroups) claim(ctx context.Context, mgr *cgroups.Manager, task sdk.Task, prepared any) (*cgroups.Group, []*os.File, *os.File, error) {
	g, err := mgr.Group(task.Name)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("while naming the task's cgroup: %w", err)
	}
	limits := c.limits(task.Spec.Process)
	if spare, ok := prepared.(*cgroups.Group); ok && mgr == c.mgr {
		oom, err := g.Adopt(ctx, spare, limits)
		if err != nil {
			c.discard(spare)
			return nil, nil, nil, fmt.Errorf("while making the task's cgroup: %w", err)
		}
		return g, nil, oom, nil
	}
	procs, oom, err := g.Create(limits)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("while making the task's cgroup: %w", err)
	}
	return g, procs, oom, nil
}

// group is task name's cgroup: the one it was given at its start (h, when
// known), or its name's in c.mgr, or in where finder (if any) says; nil if
// none.
func (c *taskCgroups) group(ctx context.Context, h *handle, name string, finder CgroupFinder) *cgroups.Group {
	if h != nil {
		if g := h.cgroup(); g != nil {
			return g
		}
	}
	mgr := c.mgr
	if mgr == nil && finder != nil {
		var err error
		if mgr, err = finder.TaskCgroups(ctx); err != nil {
			c.log.Debug("cannot find a task's cgroup", "task", name, "error", err)
			return nil
		}
	}
	if mgr == nil {
		return nil
	}
	g, err := mgr.Group(name)
	if err != nil {
		return nil
	}
	return g
}

// usage returns what g counted, false if it has no figures.
func (c *taskCgroups) usage(g *cgroups.Group) (cgroups.Usage, bool) {
	if g == nil {
		return cgroups.Usage{}, false
	}
	u, err := g.Stats()
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.log.Debug("cannot read a task's usage", "dirs", g.Dirs(), "error", err)
		}
		return cgroups.Usage{}, false
	}
	return u, true
}

// describe is g's final usage, as the terminated state's message tells it.
func (c *taskCgroups) describe(g *cgroups.Group) string {
	u, ok := c.usage(g)
	if !ok {
		return ""
	}
	s := fmt.Sprintf("used %.3f CPU seconds", u.CPUSeconds)
	if u.MemoryPeakBytes > 0 {
		s += fmt.Sprintf(", at most %.1f MiB of memory", float64(u.MemoryPeakBytes)/(1<<20))
	}
	return s
}

// remove ends everything left in g and removes it.
func (c *taskCgroups) remove(ctx context.Context, g *cgroups.Group) {
	if g == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, removeTimeout)
	defer cancel()
	if err := g.Remove(ctx); err != nil {
		// The task's end is recorded and its directory goes: a cgroup that
		// will not go is the operator's to see, not a reason to keep the
		// task.
		c.log.Warn("cannot remove a task's cgroup", "dirs", g.Dirs(), "error", err)
	}
}
