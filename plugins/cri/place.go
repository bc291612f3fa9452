package cri

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/protobuf/proto"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// placement is where the driver makes its tasks' containers: in a pod
// sandbox of each task's own (a runtime no kubelet shares), or in the
// executor's own pod (beside a kubelet).
type placement interface {
	// sandbox returns the sandbox for h's container and the sandbox config
	// to create the container with: containerd takes the container's log
	// directory and cgroup parent from it.
	sandbox(ctx context.Context, h *handle) (id string, cfg *cri.PodSandboxConfig, err error)
	// name is the container's metadata name for a task's attempt.
	name(task, attempt string) string
	// labels are the labels a container of that name carries beyond the
	// driver's own.
	labels(name string) map[string]string
	// objects lists what the placement made for the tasks whose labels
	// include sel: removing them removes everything of those tasks.
	objects(ctx context.Context, sel map[string]string) ([]object, error)
	// remove removes an object of objects, with everything in it.
	remove(ctx context.Context, o object) error
	// nodePath is where a path of the executor's data directory is on the
	// node, as the runtime resolves the paths it is given.
	nodePath(p string) string
	// privileged reports whether a privileged container may go into the
	// task's sandbox.
	privileged() bool
	// sandboxReady reports whether the sandbox of h's container is ready
	// (true when that cannot be told).
	sandboxReady(ctx context.Context, h *handle) bool
}

// object is a sandbox or a container a placement made, found by its
// labels.
type object struct {
	id     string
	labels map[string]string
}

// taskSandboxes gives each task a pod sandbox of its own, in the node's
// network namespace. A kubelet sharing the runtime kills such sandboxes
// (they belong to no pod it knows), so it is for runtimes no kubelet uses.
type taskSandboxes struct{ d *Driver }

func (p taskSandboxes) sandbox(ctx context.Context, h *handle) (string, *cri.PodSandboxConfig, error) {
	d := h.d
	cfg := d.sandboxConfig(h.task, h.attempt)
	boxes, err := d.cri.sandboxes(ctx, d.selector(h.task.Name, h.attempt))
	if err != nil {
		return "", nil, err
	}
	for _, b := range boxes {
		if b.State == cri.PodSandboxState_SANDBOX_READY {
			return b.Id, cfg, nil
		}
		// A sandbox that is not ready (its pause process died, the node
		// rebooted) cannot hold a new container; its metadata would also
		// clash with a new one's.
		unlock := d.removalLock(h.task.Name)
		err := d.cri.removeSandbox(ctx, b.Id)
		unlock()
		if err != nil {
			return "", nil, err
		}
	}
	resp, err := d.cri.rt.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return "", nil, fmt.Errorf("cannot create the pod sandbox: %w", err)
	}
	return resp.PodSandboxId, cfg, nil
}

func (taskSandboxes) name(task, _ string) string      { return task }
func (taskSandboxes) labels(string) map[string]string { return nil }
func (taskSandboxes) nodePath(p string) string        { return p }

// privileged: a task's own sandbox is made privileged for a privileged
// container.
func (taskSandboxes) privileged() bool { return true }

func (p taskSandboxes) sandboxReady(ctx context.Context, h *handle) bool {
	boxes, err := p.d.cri.sandboxes(ctx, p.d.selector(h.task.Name, h.attempt))
	if err != nil {
		return true
	}
	for _, b := range boxes {
		if b.State == cri.PodSandboxState_SANDBOX_READY {
			return true
		}
	}
	return len(boxes) == 0
}
func (p taskSandboxes) remove(ctx context.Context, o object) error {
	return p.d.cri.removeSandbox(ctx, o.id)
}

func (p taskSandboxes) objects(ctx context.Context, sel map[string]string) ([]object, error) {
	boxes, err := p.d.cri.sandboxes(ctx, sel)
	if err != nil {
		return nil, err
	}
	out := make([]object, len(boxes))
	for i, b := range boxes {
		out[i] = object{id: b.Id, labels: b.Labels}
	}
	return out, nil
}

// Labels the kubelet puts on a pod's sandbox and containers (see
// k8s.io/kubelet/pkg/types).
const (
	kubePodUID        = "io.kubernetes.pod.uid"
	kubePodName       = "io.kubernetes.pod.name"
	kubePodNamespace  = "io.kubernetes.pod.namespace"
	kubeContainerName = "io.kubernetes.container.name"
)

// ownPod makes task containers in the executor's own pod sandbox, as
// containers of that pod the kubelet did not create. The kubelet kills any
// container whose pod it does not know (its pod UID label names none of
// its pods), and leaves alone a container of a pod it runs that is not in
// the pod's spec; when it deletes the pod, the runtime stops and removes
// every container in the pod's sandbox, tasks included. Tasks share the
// pod's network and IPC namespaces and are charged to its cgroup.
type ownPod struct {
	d *Driver
	// id and cfg are the pod's sandbox, as the runtime reports it.
	id  string
	cfg *cri.PodSandboxConfig
	// dataDir is the executor's data directory, which is nodeDataDir on
	// the node (a volume of the pod).
	dataDir, nodeDataDir string
}

// findOwnPod finds the executor's pod sandbox by the pod's UID and the
// node's path of the data directory from the pod's containers' mounts.
func findOwnPod(ctx context.Context, d *Driver, podUID, dataDir string) (*ownPod, error) {
	resp, err := d.cri.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{
		LabelSelector: map[string]string{kubePodUID: podUID},
		State:         &cri.PodSandboxStateValue{State: cri.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, fmt.Errorf("while looking for the executor's pod sandbox: %w", err)
	}
	if len(resp.Items) != 1 {
		return nil, fmt.Errorf("found %d ready pod sandboxes of the executor's pod (UID %s) in the runtime, want 1: is --cri-socket the runtime of this node's kubelet, and the pod UID the executor's (downward API metadata.uid)?", len(resp.Items), podUID)
	}
	p := &ownPod{d: d, id: resp.Items[0].Id, dataDir: dataDir}
	st, err := d.cri.rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("while asking for the executor's pod sandbox %s: %w", p.id, err)
	}
	// containerd reports the config the sandbox was made with in its
	// verbose information; containers made in the sandbox need it.
	var info struct {
		Config *cri.PodSandboxConfig `json:"config"`
	}
	if raw := st.Info["info"]; raw == "" || json.Unmarshal([]byte(raw), &info) != nil || info.Config == nil || info.Config.Metadata == nil {
		return nil, errors.New("the runtime does not report the pod sandbox's config (containerd does, in PodSandboxStatus' verbose information): container tasks cannot be placed in the executor's pod")
	}
	p.cfg = info.Config
	if p.nodeDataDir, err = p.findNodeDataDir(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// findNodeDataDir finds where the data directory is on the node: the
// runtime writes the containers' logs there and mounts the tasks' emptyDir
// volumes from it. The data directory must be on a volume of the pod; the
// pod's containers' mounts say which node path that volume is.
func (p *ownPod) findNodeDataDir(ctx context.Context) (string, error) {
	point, err := mountPointOf(p.dataDir)
	if err != nil {
		return "", err
	}
	resp, err := p.d.cri.rt.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
		PodSandboxId: p.id,
		State:        &cri.ContainerStateValue{State: cri.ContainerState_CONTAINER_RUNNING},
	}})
	if err != nil {
		return "", fmt.Errorf("while listing the executor pod's containers: %w", err)
	}
	found := map[string]bool{}
	for _, c := range resp.Containers {
		if c.Labels[labelOwner] != "" {
			continue // a task's
		}
		st, err := p.d.cri.rt.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: c.Id})
		if err != nil {
			return "", fmt.Errorf("while asking for container %s: %w", c.Id, err)
		}
		for _, m := range st.Status.GetMounts() {
			if filepath.Clean(m.ContainerPath) == point {
				found[m.HostPath] = true
			}
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("the data directory %s is on %s, which %d containers of the executor's pod mount from the node: it must be on a volume of the pod (an emptyDir), which the runtime can reach", p.dataDir, point, len(found))
	}
	for host := range found {
		rel, err := filepath.Rel(point, p.dataDir)
		if err != nil {
			return "", err
		}
		return filepath.Join(host, rel), nil
	}
	return "", nil
}

// mountPointOf returns the mount point that holds path, as this process
// sees it.
func mountPointOf(path string) (string, error) {
	path, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("while resolving the data directory: %w", err)
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("while reading the mount table: %w", err)
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		point := unescapeMount(fields[4])
		if (path == point || strings.HasPrefix(path, strings.TrimSuffix(point, "/")+"/")) && len(point) > len(best) {
			best = point
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("while reading the mount table: %w", err)
	}
	return best, nil
}

// unescapeMount undoes the octal escapes of /proc/self/mountinfo (a space
// is \040).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (p *ownPod) sandbox(_ context.Context, h *handle) (string, *cri.PodSandboxConfig, error) {
	cfg := proto.Clone(p.cfg).(*cri.PodSandboxConfig)
	// The task's log goes to its directory, not the pod's log directory:
	// the executor serves it, and it goes with the task.
	cfg.LogDirectory = p.nodePath(h.task.Dir)
	return p.id, cfg, nil
}

// name is unique in the pod across tasks and their attempts, and tells a
// task from the pod's own containers.
func (p *ownPod) name(task, attempt string) string { return "task-" + task + "-" + attempt }

// labels make the container the pod's for the kubelet: the pod's UID, name
// and namespace, and a container name.
func (p *ownPod) labels(name string) map[string]string {
	l := map[string]string{kubeContainerName: name}
	for _, k := range []string{kubePodUID, kubePodName, kubePodNamespace} {
		if v, ok := p.cfg.Labels[k]; ok {
			l[k] = v
		}
	}
	return l
}

// privileged: containerd refuses a privileged container in a sandbox that
// is not (one whose pod has no privileged container).
func (p *ownPod) privileged() bool {
	return p.cfg.GetLinux().GetSecurityContext().GetPrivileged()
}

func (p *ownPod) sandboxReady(ctx context.Context, _ *handle) bool {
	st, err := p.d.cri.rt.PodSandboxStatus(ctx, &cri.PodSandboxStatusRequest{PodSandboxId: p.id})
	return err != nil || st.GetStatus().GetState() == cri.PodSandboxState_SANDBOX_READY
}

func (p *ownPod) nodePath(path string) string {
	rel, err := filepath.Rel(p.dataDir, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return path
	}
	return filepath.Join(p.nodeDataDir, rel)
}

func (p *ownPod) objects(ctx context.Context, sel map[string]string) ([]object, error) {
	ctrs, err := p.d.cri.containers(ctx, sel)
	if err != nil {
		return nil, err
	}
	out := make([]object, len(ctrs))
	for i, c := range ctrs {
		out[i] = object{id: c.Id, labels: c.Labels}
	}
	return out, nil
}

func (p *ownPod) remove(ctx context.Context, o object) error {
	if _, err := p.d.cri.rt.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: o.id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("while stopping container %s: %w", o.id, err)
	}
	if _, err := p.d.cri.rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: o.id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("while removing container %s: %w", o.id, err)
	}
	return nil
}
