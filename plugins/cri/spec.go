package cri

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// validate checks what only this runtime knows: that every volume mount
// names a volume it can provide.
func (d *Driver) validate(spec sdk.TaskSpec) error {
	if spec.Container == nil {
		return fmt.Errorf("the cri runtime runs only container tasks: %w", sdk.ErrInvalidSpec)
	}
	if _, err := securityContext(spec.Container.SecurityContext, d.place.privileged()); err != nil {
		return err
	}
	declared := map[string]*corev1.Volume{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		switch {
		case v.HostPath != nil:
			if !filepath.IsAbs(v.HostPath.Path) {
				return fmt.Errorf("volume %q: hostPath.path %q must be absolute: %w", v.Name, v.HostPath.Path, sdk.ErrInvalidSpec)
			}
			if !d.hostPathAllowed(v.HostPath.Path) {
				return fmt.Errorf("volume %q: hostPath %s is not below a directory the executor allows (--allowed-host-path: %s): %w",
					v.Name, v.HostPath.Path, d.allowedList(), sdk.ErrInvalidSpec)
			}
			if t := v.HostPath.Type; t != nil && *t != corev1.HostPathUnset && *t != corev1.HostPathDirectory && *t != corev1.HostPathDirectoryOrCreate {
				return fmt.Errorf("volume %q: hostPath.type %q is not supported (use \"\", Directory or DirectoryOrCreate): %w", v.Name, *t, sdk.ErrInvalidSpec)
			}
		case v.EmptyDir != nil:
			if v.EmptyDir.Medium != corev1.StorageMediumDefault {
				return fmt.Errorf("volume %q: emptyDir.medium %q is not supported (only the default, on disk in the task's directory): %w", v.Name, v.EmptyDir.Medium, sdk.ErrInvalidSpec)
			}
		default:
			return fmt.Errorf("volume %q: only hostPath and emptyDir volumes are supported: %w", v.Name, sdk.ErrInvalidSpec)
		}
		declared[v.Name] = v
	}
	for _, m := range spec.Container.VolumeMounts {
		if declared[m.Name] == nil && d.volumes[m.Name] == "" {
			return fmt.Errorf("volumeMount %q names no volume: declare it in spec.volumes or offer it with the executor's --volume %s=HOSTPATH (offered: %s): %w",
				m.Name, m.Name, d.offered(), sdk.ErrInvalidSpec)
		}
	}
	return nil
}

// hostPathAllowed reports whether a hostPath volume's path is one of the
// allowed directories or below one. The check is on the path as written
// (a ".." that leaves a prefix is caught by cleaning it): a symbolic link
// below an allowed directory is followed by the runtime, so an operator
// allows only directories that no task or caller can put links in.
func (d *Driver) hostPathAllowed(path string) bool {
	path = filepath.Clean(path)
	for _, p := range d.allowedHostPaths {
		if path == p || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/") {
			return true
		}
	}
	return false
}

func (d *Driver) allowedList() string {
	if len(d.allowedHostPaths) == 0 {
		return "none"
	}
	return strings.Join(d.allowedHostPaths, ", ")
}

// offered lists the operator's volumes, for error messages.
func (d *Driver) offered() string {
	if len(d.volumes) == 0 {
		return "none"
	}
	names := make([]string, 0, len(d.volumes))
	for n := range d.volumes {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// mounts resolves the container's volume mounts to host paths, creating
// emptyDir volumes (under the task's directory) and DirectoryOrCreate host
// paths. An error here is the task's start error.
func (d *Driver) mounts(task sdk.Task) ([]*cri.Mount, error) {
	declared := map[string]corev1.Volume{}
	for _, v := range task.Spec.Volumes {
		declared[v.Name] = v
	}
	var out []*cri.Mount
	for _, m := range task.Spec.Container.VolumeMounts {
		var host string
		if v, ok := declared[m.Name]; ok {
			switch {
			case v.HostPath != nil:
				host = v.HostPath.Path
				if t := v.HostPath.Type; t != nil && *t == corev1.HostPathDirectoryOrCreate {
					if err := os.MkdirAll(host, 0o755); err != nil {
						return nil, fmt.Errorf("while creating hostPath volume %q: %w", m.Name, err)
					}
				}
				if t := v.HostPath.Type; t != nil && *t != corev1.HostPathUnset {
					if fi, err := os.Stat(host); err != nil || !fi.IsDir() {
						return nil, fmt.Errorf("hostPath volume %q: %s is not a directory", m.Name, host)
					}
				}
			case v.EmptyDir != nil:
				// Under the task's directory: it lives as long as the task,
				// and goes when the task is deleted.
				dir := filepath.Join(task.Dir, "volumes", v.Name)
				if err := os.MkdirAll(dir, 0o777); err != nil {
					return nil, fmt.Errorf("while creating emptyDir volume %q: %w", m.Name, err)
				}
				// Any user in the container may write to it, as in Kubernetes.
				if err := os.Chmod(dir, 0o777); err != nil {
					return nil, fmt.Errorf("while creating emptyDir volume %q: %w", m.Name, err)
				}
				host = d.place.nodePath(dir)
			}
		} else {
			host = d.volumes[m.Name]
		}
		if host == "" {
			return nil, fmt.Errorf("volumeMount %q names no volume", m.Name)
		}
		if m.SubPath != "" {
			host = filepath.Join(host, m.SubPath)
			if err := os.MkdirAll(host, 0o755); err != nil {
				return nil, fmt.Errorf("while creating subPath %q of volume %q: %w", m.SubPath, m.Name, err)
			}
		}
		mount := &cri.Mount{ContainerPath: m.MountPath, HostPath: host, Readonly: m.ReadOnly}
		if m.MountPropagation != nil {
			switch *m.MountPropagation {
			case corev1.MountPropagationHostToContainer:
				mount.Propagation = cri.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
			case corev1.MountPropagationBidirectional:
				mount.Propagation = cri.MountPropagation_PROPAGATION_BIDIRECTIONAL
			}
		}
		out = append(out, mount)
	}
	return out, nil
}

// sandboxConfig is the pod sandbox of one task: in the node's network
// namespace (no CNI is needed), its logs in the task's directory.
func (d *Driver) sandboxConfig(task sdk.Task, attempt string) *cri.PodSandboxConfig {
	labels := d.labels(task, attempt)
	return &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{
			Name: task.Name, Namespace: sandboxNamespace,
			// Unique per executor and attempt: containerd refuses two
			// sandboxes with the same metadata.
			Uid: d.owner + "-" + attempt,
		},
		LogDirectory: task.Dir,
		Labels:       labels,
		Linux: &cri.LinuxPodSandboxConfig{
			SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
				Privileged:       privileged(task.Spec.Container),
			},
		},
	}
}

// containerConfig turns the task's corev1.Container into CRI's.
func (d *Driver) containerConfig(task sdk.Task, attempt, imageRef string, mounts []*cri.Mount) (*cri.ContainerConfig, error) {
	c := task.Spec.Container
	sc, err := securityContext(c.SecurityContext, d.place.privileged())
	if err != nil {
		return nil, err
	}
	// A name given twice keeps its first place and its last value, as the
	// kubelet does: the OCI runtime would hand both to the process, and
	// which one getenv sees is up to its libc.
	envs := make([]*cri.KeyValue, 0, len(c.Env))
	at := map[string]int{}
	for _, e := range c.Env {
		if i, ok := at[e.Name]; ok {
			envs[i].Value = []byte(e.Value)
			continue
		}
		at[e.Name] = len(envs)
		envs = append(envs, &cri.KeyValue{Key: e.Name, Value: []byte(e.Value)})
	}
	return &cri.ContainerConfig{
		Metadata:   &cri.ContainerMetadata{Name: d.place.name(task.Name, attempt)},
		Image:      &cri.ImageSpec{Image: imageRef, UserSpecifiedImage: c.Image},
		Command:    c.Command,
		Args:       c.Args,
		WorkingDir: c.WorkingDir,
		Envs:       envs,
		Mounts:     mounts,
		Labels:     d.labels(task, attempt),
		LogPath:    logFile,
		Stdin:      c.Stdin,
		StdinOnce:  c.StdinOnce,
		Tty:        c.TTY,
		Linux:      &cri.LinuxContainerConfig{Resources: resources(c.Resources), SecurityContext: sc},
	}, nil
}

func privileged(c *corev1.Container) bool {
	return c != nil && c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
}

func (d *Driver) labels(task sdk.Task, attempt string) map[string]string {
	l := d.selector(task.Name, attempt)
	l[labelDir] = task.Dir
	for k, v := range d.place.labels(d.place.name(task.Name, attempt)) {
		l[k] = v
	}
	return l
}

// resources maps what CRI can express of Kubernetes' requests and limits,
// the way the kubelet does: CPU limit to a CFS quota, CPU request to
// shares, memory limit to the memory limit.
func resources(r corev1.ResourceRequirements) *cri.LinuxContainerResources {
	const period = 100000 // µs, the kernel's default CFS period
	out := &cri.LinuxContainerResources{}
	if q, ok := r.Limits[corev1.ResourceCPU]; ok && !q.IsZero() {
		out.CpuPeriod = period
		out.CpuQuota = max(q.MilliValue()*period/1000, 1000)
	}
	cpuReq, ok := r.Requests[corev1.ResourceCPU]
	if !ok {
		cpuReq, ok = r.Limits[corev1.ResourceCPU]
	}
	if ok && !cpuReq.IsZero() {
		out.CpuShares = max(cpuReq.MilliValue()*1024/1000, 2)
	}
	if q, ok := r.Limits[corev1.ResourceMemory]; ok && !q.IsZero() {
		out.MemoryLimitInBytes = q.Value()
	}
	return out
}

// pullPolicy is the container's image pull policy with Kubernetes' default:
// Always for an image tagged latest or not tagged, IfNotPresent otherwise.
func pullPolicy(c *corev1.Container) corev1.PullPolicy {
	if c.ImagePullPolicy != "" {
		return c.ImagePullPolicy
	}
	image := c.Image
	if strings.Contains(image, "@") {
		return corev1.PullIfNotPresent
	}
	// The tag follows the last colon after the last slash (a colon before
	// it is a registry's port).
	last := image[strings.LastIndexByte(image, '/')+1:]
	if i := strings.LastIndexByte(last, ':'); i < 0 || last[i+1:] == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}
