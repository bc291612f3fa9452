package cri

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// defaultGrace is the grace period when the host does not set one.
const defaultGrace = 10 * time.Second

// monitorInterval is how often the monitor lists the running containers to
// see which have exited. CRI v1 as containerd 1.6 serves it has no event
// stream, so this bounds how late an exit is seen.
const monitorInterval = 100 * time.Millisecond

// janitorInterval is how often the janitor looks for sandboxes no task
// needs any more.
const janitorInterval = time.Minute

// settleTimeout bounds how long Start and Recover wait for a task to get
// past creating; a task still creating then is reported as such, and its
// later changes come as events.
const settleTimeout = 25 * time.Second

// Driver is the cri runtime: each task is a pod sandbox with one container,
// created through the node's CRI runtime.
type Driver struct {
	log    hclog.Logger
	events sdk.Publisher
	// ctx lives as long as the plugin: Close cancels it, which ends the
	// monitor, the event followers and the handles' loops.
	ctx    context.Context
	cancel context.CancelFunc
	cri    *client
	owner  string
	// logUnknownTold: the log says once that whether a container's log is
	// complete cannot be told here (see logWritten).
	logUnknownTold atomic.Bool
	grace          time.Duration
	volumes        map[string]string
	// allowedHostPaths are the node directories a hostPath volume may be in.
	allowedHostPaths []string
	// maxLog caps container.log as the shim caps a process's output: the
	// file is rotated to container.log.1 at half of it.
	maxLog int64

	// place is where tasks' containers are made.
	place placement
	// following: the runtime's container events are being followed.
	following atomic.Bool

	handles sdk.Handles[*handle]
	// creating serialises the making of handles from what the task's
	// directory and containerd hold, so that a task gets one.
	creating sync.Mutex
	// cleanups are the removals of finished tasks' sandboxes in flight.
	cleanups sync.WaitGroup
	// removals serialise the removals of one task's sandboxes: containerd
	// fails a stop or remove that meets another on the same sandbox.
	removals [64]sync.Mutex
}

// removalLock locks the removals of the named task's sandboxes.
func (d *Driver) removalLock(name string) func() {
	h := fnv.New32a()
	h.Write([]byte(name))
	mu := &d.removals[h.Sum32()%uint32(len(d.removals))]
	mu.Lock()
	return mu.Unlock
}

func newDriver(log hclog.Logger) *Driver {
	ctx, cancel := context.WithCancel(context.Background())
	return &Driver{log: log, ctx: ctx, cancel: cancel}
}

// Init reads the host's settings, connects to the CRI socket and starts
// the monitor and the janitor.
func (d *Driver) Init(ctx context.Context, cfg sdk.Config) (sdk.Info, error) {
	d.grace = defaultGrace
	if v := cfg.Settings[sdk.SettingGracePeriod]; v != "" {
		g, err := time.ParseDuration(v)
		if err != nil {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: %w", sdk.SettingGracePeriod, v, err)
		}
		d.grace = g
	}
	d.volumes = map[string]string{}
	if v := cfg.Settings[sdk.SettingVolumes]; v != "" {
		if err := json.Unmarshal([]byte(v), &d.volumes); err != nil {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: %w", sdk.SettingVolumes, v, err)
		}
	}
	d.allowedHostPaths = nil
	if v := cfg.Settings[sdk.SettingAllowedHostPaths]; v != "" {
		if err := json.Unmarshal([]byte(v), &d.allowedHostPaths); err != nil {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: %w", sdk.SettingAllowedHostPaths, v, err)
		}
	}
	if v := cfg.Settings[sdk.SettingMaxLogBytes]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return sdk.Info{}, fmt.Errorf("while reading setting %s=%q: not a byte count", sdk.SettingMaxLogBytes, v)
		}
		d.maxLog = n
	}
	socket := cfg.Settings[sdk.SettingCRISocket]
	if socket == "" {
		return sdk.Info{}, errors.New("no CRI socket: the host must set " + sdk.SettingCRISocket)
	}
	owner, err := ownerID(cfg.DataDir)
	if err != nil {
		return sdk.Info{}, err
	}
	d.owner = owner
	c, v, err := dial(ctx, socket)
	if err != nil {
		return sdk.Info{}, err
	}
	d.cri = c
	d.log.Info("connected to the CRI runtime", "socket", socket, "runtime", v.RuntimeName, "version", v.RuntimeVersion, "api", v.RuntimeApiVersion, "owner", owner)
	d.place = taskSandboxes{d}
	if uid := cfg.Settings[sdk.SettingPodUID]; uid != "" {
		pod, err := findOwnPod(ctx, d, uid, cfg.DataDir)
		if err != nil {
			c.conn.Close()
			return sdk.Info{}, err
		}
		d.place = pod
		d.log.Info("container tasks run in the executor's pod", "sandbox", pod.id, "pod", pod.cfg.Metadata.Namespace+"/"+pod.cfg.Metadata.Name, "dataDirOnNode", pod.nodeDataDir)
	}
	go d.monitor()
	go d.follow()
	go d.followContainerd()
	go d.janitor()
	return sdk.Info{Name: Name, Version: version, Kinds: []sdk.Kind{sdk.KindContainer}}, nil
}

// Validate checks the volumes a container spec mounts.
func (d *Driver) Validate(_ context.Context, spec sdk.TaskSpec) error {
	return d.validate(spec)
}

// Start creates and starts the task's container, or finds it if a
// previous plugin process did.
func (d *Driver) Start(ctx context.Context, task sdk.Task) (sdk.TaskStatus, error) {
	if err := d.validate(task.Spec); err != nil {
		return sdk.TaskStatus{}, err
	}
	h, err := d.handleFor(task, true)
	if err != nil {
		return sdk.TaskStatus{}, err
	}
	return h.settled(ctx), nil
}

// handleFor returns the task's handle, making it from what the task's
// directory and containerd hold. With create unset, a task never started
// gets none.
func (d *Driver) handleFor(task sdk.Task, create bool) (*handle, error) {
	if h, ok := d.handles.Get(task.Name); ok {
		return h, nil
	}
	d.creating.Lock()
	defer d.creating.Unlock()
	if h, ok := d.handles.Get(task.Name); ok {
		return h, nil
	}
	rec, err := readExit(task.Dir)
	if err != nil {
		return nil, err
	}
	attempt, err := readAttempt(task.Dir)
	if err != nil {
		return nil, err
	}
	if attempt == "" && rec == nil {
		if !create {
			return nil, nil
		}
		if attempt, err = ensureAttempt(task.Dir); err != nil {
			return nil, err
		}
	}
	h := newHandle(d, task, attempt)
	if rec != nil {
		h.st, h.final = rec.status(task.Name), true
	}
	d.handles.GetOrAdd(task.Name, func() *handle { return h })
	if rec == nil {
		// In the table first: its container's events find it.
		h.start()
	}
	return h, nil
}

// settled waits until the task is past creating (or settleTimeout) and
// returns its status.
func (h *handle) settled(ctx context.Context) sdk.TaskStatus {
	timer := time.NewTimer(settleTimeout)
	defer timer.Stop()
	for {
		st, _, changed := h.snapshot()
		if w := st.State.Waiting; w == nil || w.Reason != reasonCreating {
			return st
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return st
		case <-timer.C:
			return st
		}
	}
}

// Stop stops a task's container and returns once it has terminated.
func (d *Driver) Stop(ctx context.Context, name string, grace time.Duration) error {
	h := d.handle(name)
	if h == nil {
		return fmt.Errorf("task %q: %w", name, sdk.ErrNotFound)
	}
	return h.stop(ctx, grace)
}

// Remove removes everything the task has in containerd.
func (d *Driver) Remove(ctx context.Context, name string) error {
	if h := d.handle(name); h != nil {
		if err := h.stop(ctx, 0); err != nil {
			return err
		}
		h.halt()
		// Its cleanup writes the exit record into the task's directory,
		// which the host removes once this returns.
		h.cleaning.Wait()
		h.awaitRuntimeExit(ctx)
	}
	// Every attempt of the name, including ones a previous plugin process
	// knew and this one never saw.
	defer d.removalLock(name)()
	objs, err := d.place.objects(ctx, map[string]string{labelOwner: d.owner, labelTask: name})
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := d.place.remove(ctx, o); err != nil {
			return err
		}
	}
	if h, ok := d.handles.Get(name); ok {
		d.handles.Remove(name, h)
	}
	return nil
}

// Status returns a task's status.
func (d *Driver) Status(_ context.Context, name string) (sdk.TaskStatus, error) {
	h := d.handle(name)
	if h == nil {
		return sdk.TaskStatus{}, fmt.Errorf("task %q: %w", name, sdk.ErrNotFound)
	}
	st, _, _ := h.snapshot()
	return st, nil
}

// List returns the status of every task the driver knows.
func (d *Driver) List(_ context.Context) ([]sdk.TaskStatus, error) {
	hs := d.handles.All()
	out := make([]sdk.TaskStatus, 0, len(hs))
	for _, h := range hs {
		st, _, _ := h.snapshot()
		out = append(out, st)
	}
	return out, nil
}

// Recover adopts the tasks this runtime started before a restart, from
// their directories and containerd.
func (d *Driver) Recover(ctx context.Context, tasks []sdk.Task) ([]sdk.TaskStatus, error) {
	sts := make([]*sdk.TaskStatus, len(tasks))
	errs := make([]error, len(tasks))
	var wg sync.WaitGroup
	// Adopting asks containerd a few questions per task; a bound keeps
	// thousands of tasks from asking all at once.
	sem := make(chan struct{}, 16)
	for i, task := range tasks {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			h, err := d.handleFor(task, false)
			if err != nil {
				errs[i] = fmt.Errorf("while recovering task %q: %w", task.Name, err)
				return
			}
			if h != nil {
				st := h.settled(ctx)
				sts[i] = &st
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var out []sdk.TaskStatus
	for _, st := range sts {
		if st != nil {
			out = append(out, *st)
		}
	}
	d.log.Info("recovered tasks", "asked", len(tasks), "found", len(out))
	return out, nil
}

// Events streams status changes.
func (d *Driver) Events(ctx context.Context) (<-chan sdk.TaskStatus, error) {
	return d.events.Subscribe(ctx), nil
}

func (d *Driver) handle(name string) *handle {
	h, _ := d.handles.Get(name)
	return h
}

// monitor lists the plugin's running containers and nudges the handles
// whose container is no longer running. With the runtime's events
// followed (follow), the list is only a safety net, made less often.
func (d *Driver) monitor() {
	ticker := time.NewTicker(monitorInterval)
	defer ticker.Stop()
	for tick := 1; ; tick++ {
		<-ticker.C
		if d.maxLog > 0 && tick%logCheckTicks == 0 {
			d.rotateLogs()
		}
		if d.following.Load() && tick%eventedListTicks != 0 {
			continue
		}
		watched := map[string]*handle{}
		for _, h := range d.handles.All() {
			if id, ok := h.running(); ok {
				watched[id] = h
			}
		}
		if len(watched) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		resp, err := d.cri.rt.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
			State:         &cri.ContainerStateValue{State: cri.ContainerState_CONTAINER_RUNNING},
			LabelSelector: map[string]string{labelOwner: d.owner},
		}})
		cancel()
		if err != nil {
			d.log.Warn("cannot list containers", "error", err)
			continue
		}
		for _, c := range resp.Containers {
			delete(watched, c.Id)
		}
		for _, h := range watched {
			h.nudge()
		}
	}
}

// logCheckTicks is how many monitor ticks pass between looks at the
// containers' log sizes.
const logCheckTicks = 5

// eventedListTicks is how many monitor ticks pass between lists while the
// runtime's events are followed.
const eventedListTicks = 20

// follow follows the runtime's container events (CRI GetContainerEvents:
// containerd 1.7 and later) and nudges a task's handle as soon as its
// container stops, instead of at the monitor's next list. A runtime without
// them (containerd 1.6) answers Unimplemented: the list then does it all.
func (d *Driver) follow() {
	backoff := 100 * time.Millisecond
	for {
		err := d.followOnce()
		d.following.Store(false)
		if status.Code(err) == codes.Unimplemented {
			d.log.Info("the runtime has no CRI container events: containerd's own events and a list of the running containers tell exits", "listEvery", monitorInterval.String())
			return
		}
		if d.ctx.Err() != nil {
			return
		}
		d.log.Warn("lost the runtime's container events; following them again", "error", err, "in", backoff.String())
		time.Sleep(backoff)
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (d *Driver) followOnce() error {
	stream, err := d.cri.rt.GetContainerEvents(d.ctx, &cri.GetEventsRequest{})
	if err != nil {
		return err
	}
	for first := true; ; first = false {
		ev, err := stream.Recv()
		if err != nil {
			return err
		}
		if first {
			d.following.Store(true)
			d.log.Debug("following the runtime's container events")
		}
		if ev.ContainerEventType != cri.ContainerEventType_CONTAINER_STOPPED_EVENT {
			continue
		}
		if h := d.handleOfContainer(ev.ContainerId); h != nil {
			h.nudge()
		}
	}
}

// handleOfContainer returns the handle whose container is id, if any.
func (d *Driver) handleOfContainer(id string) *handle {
	for _, h := range d.handles.All() {
		h.mu.Lock()
		ours := h.containerID == id
		h.mu.Unlock()
		if ours {
			return h
		}
	}
	return nil
}

// rotateLogs caps the running containers' logs the way the kubelet does:
// the log is renamed aside and the runtime asked to reopen it.
func (d *Driver) rotateLogs() {
	var hs []*handle
	for _, h := range d.handles.All() {
		if _, ok := h.running(); ok {
			hs = append(hs, h)
		}
	}
	for _, h := range hs {
		id, _ := h.running()
		path := filepath.Join(h.task.Dir, logFile)
		fi, err := os.Stat(path)
		if err != nil || fi.Size() < d.maxLog/2 {
			continue
		}
		if err := os.Rename(path, path+sdk.RotatedSuffix); err != nil {
			d.log.Warn("cannot rotate a container's log", "task", h.task.Name, "error", err)
			continue
		}
		ctx, cancel := context.WithTimeout(d.ctx, 10*time.Second)
		_, err = d.cri.rt.ReopenContainerLog(ctx, &cri.ReopenContainerLogRequest{ContainerId: id})
		cancel()
		if err != nil {
			d.log.Warn("cannot reopen a container's log after rotating it", "task", h.task.Name, "error", err)
		}
	}
}

// janitor removes, now and then, sandboxes no task needs: the task's
// directory is gone or belongs to a newer attempt (it was deleted while the
// plugin was down), or its exit is recorded (the plugin died before
// removing it).
func (d *Driver) janitor() {
	for {
		ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
		if err := d.sweep(ctx); err != nil {
			d.log.Warn("cannot clean up sandboxes", "error", err)
		}
		cancel()
		time.Sleep(janitorInterval)
	}
}

func (d *Driver) sweep(ctx context.Context) error {
	objs, err := d.place.objects(ctx, map[string]string{labelOwner: d.owner})
	if err != nil {
		return err
	}
	for _, o := range objs {
		// Under the task's removal lock, as Remove: a record written
		// after Remove returned would land in a directory being deleted.
		name := o.labels[labelTask]
		unlock := d.removalLock(name)
		err := d.sweepOne(ctx, o)
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// sweepOne removes o if no task needs it, its task's removal lock held.
func (d *Driver) sweepOne(ctx context.Context, o object) error {
	name, attempt, dir := o.labels[labelTask], o.labels[labelAttempt], o.labels[labelDir]
	h := d.handle(name)
	if h != nil && h.attempt == attempt {
		st, final, _ := h.snapshot()
		if !final {
			return nil
		}
		// The exit record goes before the objects that also hold the
		// exit code (see cleanup).
		if err := writeExit(dir, recordOf(st)); err != nil && !errors.Is(err, fs.ErrExist) {
			d.log.Warn("cannot record a task's exit; keeping its container", "task", name, "error", err)
			return nil
		}
		h.awaitRuntimeExit(ctx)
	} else if current, err := readAttempt(dir); err == nil && current == attempt && !exists(dir, exitFile) {
		// Its task may yet be recovered.
		return nil
	}
	d.log.Debug("removing what no task needs", "id", o.id, "task", name, "attempt", attempt)
	return d.place.remove(ctx, o)
}

// cleanup writes a finished task's exit record (when record is set) and
// then removes its container (and its own sandbox) in the background; the
// janitor retries what fails. Without the record the objects stay: the
// runtime keeps the exit code, and a later look records it again.
func (d *Driver) cleanup(h *handle, record *exitRecord) {
	name := h.task.Name
	d.cleanups.Add(1)
	h.cleaning.Add(1)
	go func() {
		defer d.cleanups.Done()
		defer h.cleaning.Done()
		defer d.removalLock(name)()
		if record != nil {
			if err := writeExit(h.task.Dir, *record); err != nil && !errors.Is(err, fs.ErrExist) {
				d.log.Error("cannot record a task's exit; its container stays until it is", "task", name, "error", err)
				return
			}
		}
		ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
		defer cancel()
		h.awaitRuntimeExit(ctx)
		objs, err := d.place.objects(ctx, d.selector(name, h.attempt))
		if err == nil {
			for _, o := range objs {
				if err = d.place.remove(ctx, o); err != nil {
					break
				}
			}
		}
		if err != nil {
			d.log.Warn("cannot remove a finished task's sandbox; the janitor will", "task", name, "error", err)
		}
	}()
}

// Close lets the removals in flight finish when the host stops the plugin
// (whatever does not finish is the next plugin process's janitor's), then
// ends the driver's background work.
func (d *Driver) Close(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		d.cleanups.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
	}
	d.cancel()
}

// ensureImage makes sure the container's image is present, pulling it as
// its pull policy says, and returns the image reference to create the
// container from.
func (d *Driver) ensureImage(ctx context.Context, c *corev1.Container) (string, error) {
	policy := pullPolicy(c)
	if policy != corev1.PullAlways {
		resp, err := d.cri.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: c.Image}})
		if err != nil {
			return "", fmt.Errorf("while looking up image %q: %w", c.Image, err)
		}
		if resp.Image != nil {
			return resp.Image.Id, nil
		}
		if policy == corev1.PullNever {
			return "", &waitError{reason: reasonErrImageNever,
				msg: fmt.Sprintf("Container image %q is not present with pull policy of Never", c.Image)}
		}
	}
	resp, err := d.cri.img.PullImage(ctx, &cri.PullImageRequest{Image: &cri.ImageSpec{Image: c.Image}})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", &waitError{reason: reasonErrImagePull, msg: fmt.Sprintf("failed to pull image %q: %v", c.Image, err)}
	}
	return resp.ImageRef, nil
}

func exists(dir, name string) bool {
	_, err := os.Stat(filepath.Join(dir, name))
	return !errors.Is(err, fs.ErrNotExist)
}
