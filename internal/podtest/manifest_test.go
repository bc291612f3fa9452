package podtest

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testNode is a node with 8 GiB, cgroup v1 swap accounting and two huge
// page sizes, whose images name no user.
func testNode() node {
	return node{
		dir:           "/node",
		podUID:        "0000-uid",
		mainImage:     "localhost/busybox:latest",
		executorImage: ExecutorImage,
		imageUsers:    map[string]imageUser{},
		listenAddr:    "127.0.0.1:12345",
		memory:        8 << 30,
		hugePageSizes: []string{"1GB", "2MB"},
		swap:          swapV1,
	}
}

const volumeDir = "/node/pods/0000-uid/volumes/kubernetes.io~empty-dir/tasks"

func readManifest(t *testing.T) *corev1.Pod {
	t.Helper()
	root, err := containerdtest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, ManifestPath))
	if err != nil {
		t.Fatal(err)
	}
	pod, err := parseManifest(b)
	if err != nil {
		t.Fatalf("parsing %s: %v", ManifestPath, err)
	}
	return pod
}

// translateWith translates the real manifest, changed by mutate.
func translateWith(t *testing.T, n node, mutate func(*corev1.Pod), opts ...Option) (*plan, error) {
	t.Helper()
	pod := readManifest(t)
	if mutate != nil {
		mutate(pod)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return translate(pod, n, o)
}

func mustTranslate(t *testing.T, n node, mutate func(*corev1.Pod), opts ...Option) *plan {
	t.Helper()
	p, err := translateWith(t, n, mutate, opts...)
	if err != nil {
		t.Fatalf("translate: %v", err)
	}
	return p
}

func configOf(t *testing.T, p *plan, name string) *runtimeapi.ContainerConfig {
	t.Helper()
	for _, c := range p.containers {
		if c.name == name {
			return c.config
		}
	}
	t.Fatalf("no container %q in the plan", name)
	return nil
}

// byName finds a container of the manifest.
func byName(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	panic("no container " + name)
}

func mainSC(pod *corev1.Pod) *corev1.SecurityContext {
	c := byName(pod, MainContainer)
	if c.SecurityContext == nil {
		c.SecurityContext = &corev1.SecurityContext{}
	}
	return c.SecurityContext
}

func podSC(pod *corev1.Pod) *corev1.PodSecurityContext {
	if pod.Spec.SecurityContext == nil {
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	return pod.Spec.SecurityContext
}

func equal(t *testing.T, what string, got, want any) {
	t.Helper()
	if gm, ok := got.(proto.Message); ok {
		if wm, ok := want.(proto.Message); ok {
			if !proto.Equal(gm, wm) {
				t.Errorf("%s:\n got %v\nwant %v", what, gm, wm)
			}
			return
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s:\n got %#v\nwant %#v", what, got, want)
	}
}

// TestTranslateManifest checks the whole translation of the manifest as it
// is: what a kubelet would ask containerd for, less the documented
// deviations.
func TestTranslateManifest(t *testing.T) {
	p := mustTranslate(t, testNode(), nil)

	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD}
	equal(t, "sandbox", p.sandbox, &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "sandbox", Namespace: "default", Uid: "0000-uid"},
		LogDirectory: "/node/logs/default_sandbox_0000-uid",
		Labels: map[string]string{
			"app": "sandbox", "io.kubernetes.pod.name": "sandbox",
			"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "0000-uid",
		},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: ns,
			Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		}},
	})
	if got := []string{p.containers[0].name, p.containers[1].name}; !slices.Equal(got, []string{MainContainer, ExecutorContainer}) {
		t.Fatalf("containers %v, want the manifest's order", got)
	}
	equal(t, "url", p.url, "http://127.0.0.1:12345")
	equal(t, "dataDir", p.dataDir, volumeDir)
	equal(t, "grace", p.grace, 30*time.Second)
	equal(t, "emptyDirs", p.emptyDirs, []emptyDir{{name: "tasks", path: volumeDir}})

	// Best effort: no requests or limits anywhere.
	resources := &runtimeapi.LinuxContainerResources{
		CpuPeriod: 100000, CpuShares: 2, OomScoreAdj: 1000,
		HugepageLimits: []*runtimeapi.HugepageLimit{{PageSize: "1GB"}, {PageSize: "2MB"}},
	}
	labels := func(name string) map[string]string {
		return map[string]string{
			"io.kubernetes.container.name": name, "io.kubernetes.pod.name": "sandbox",
			"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.uid": "0000-uid",
		}
	}
	annotations := map[string]string{"io.kubernetes.container.restartCount": "0", "io.kubernetes.pod.terminationGracePeriod": "30"}

	equal(t, "main", configOf(t, p, MainContainer), &runtimeapi.ContainerConfig{
		Metadata:    &runtimeapi.ContainerMetadata{Name: MainContainer},
		Image:       &runtimeapi.ImageSpec{Image: "localhost/busybox:latest"},
		Command:     []string{"sleep", "infinity"},
		Envs:        []*runtimeapi.KeyValue{{Key: "SANDBOX_MAIN_CONTAINER", Value: []byte("main")}},
		Labels:      labels(MainContainer),
		Annotations: annotations,
		LogPath:     "main/0.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: resources,
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: ns,
				RunAsUser:        &runtimeapi.Int64Value{Value: 0},
				MaskedPaths:      kubeletMaskedPaths,
				ReadonlyPaths:    kubeletReadonlyPaths,
				Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
			},
		},
	})
	equal(t, "task-executor", configOf(t, p, ExecutorContainer), &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: ExecutorContainer},
		Image:    &runtimeapi.ImageSpec{Image: ExecutorImage},
		Args: []string{
			"--enable-sidecar-mode", "--main-container-name=main",
			"--listen-addr=127.0.0.1:12345", "--data-dir=/var/lib/sandbox/tasks",
		},
		// The downward API's fields, resolved as the kubelet resolves them.
		Envs: []*runtimeapi.KeyValue{
			{Key: "POD_NAME", Value: []byte("sandbox")}, {Key: "POD_NAMESPACE", Value: []byte("default")},
			{Key: "POD_UID", Value: []byte("0000-uid")},
		},
		Mounts:      []*runtimeapi.Mount{{ContainerPath: "/var/lib/sandbox/tasks", HostPath: volumeDir}},
		Labels:      labels(ExecutorContainer),
		Annotations: annotations,
		LogPath:     "task-executor/0.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			Resources: resources,
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: ns,
				Capabilities:     &runtimeapi.Capability{AddCapabilities: []string{"SYS_ADMIN", "SYS_PTRACE"}},
				RunAsUser:        &runtimeapi.Int64Value{Value: 0},
				MaskedPaths:      kubeletMaskedPaths,
				ReadonlyPaths:    kubeletReadonlyPaths,
				Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
				Apparmor:         &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
				ApparmorProfile:  "unconfined",
			},
		},
	})
	if p.containers[0].readyPath != "" || p.containers[1].readyPath != "/readyz" {
		t.Errorf("readiness paths %q, %q; want none for main, the manifest's /readyz for the executor", p.containers[0].readyPath, p.containers[1].readyPath)
	}
}

func TestTranslateSecurity(t *testing.T) {
	unconfined := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	runtimeDefault := &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Pid: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD}
	// want builds main's expected context from the manifest's defaults.
	want := func(change func(*runtimeapi.LinuxContainerSecurityContext)) *runtimeapi.LinuxContainerSecurityContext {
		sc := &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: ns,
			RunAsUser:        &runtimeapi.Int64Value{Value: 0},
			MaskedPaths:      kubeletMaskedPaths,
			ReadonlyPaths:    kubeletReadonlyPaths,
			Seccomp:          unconfined,
		}
		change(sc)
		return sc
	}
	tests := []struct {
		name   string
		node   func(*node)
		mutate func(*corev1.Pod)
		opts   []Option
		want   *runtimeapi.LinuxContainerSecurityContext
	}{{
		name: "non-root, no capabilities, no escalation, runtime default seccomp",
		opts: []Option{WithMainSecurityContext(&corev1.SecurityContext{
			RunAsUser: ptrTo[int64](1000), RunAsGroup: ptrTo[int64](1000), RunAsNonRoot: ptrTo(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			AllowPrivilegeEscalation: ptrTo(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		})},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser = &runtimeapi.Int64Value{Value: 1000}
			sc.RunAsGroup = &runtimeapi.Int64Value{Value: 1000}
			sc.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}
			sc.NoNewPrivs = true
			sc.Seccomp = runtimeDefault
		}),
	}, {
		name: "allowPrivilegeEscalation true is no no_new_privs",
		mutate: func(pod *corev1.Pod) {
			mainSC(pod).AllowPrivilegeEscalation = ptrTo(true)
		},
		want: want(func(*runtimeapi.LinuxContainerSecurityContext) {}),
	}, {
		name: "the pod's settings are defaults",
		mutate: func(pod *corev1.Pod) {
			sc := podSC(pod)
			sc.RunAsUser, sc.RunAsGroup = ptrTo[int64](2000), ptrTo[int64](2001)
			sc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
			sc.AppArmorProfile = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeRuntimeDefault}
			sc.SELinuxOptions = &corev1.SELinuxOptions{Type: "spc_t", Level: "s0"}
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser = &runtimeapi.Int64Value{Value: 2000}
			sc.RunAsGroup = &runtimeapi.Int64Value{Value: 2001}
			sc.Seccomp = runtimeDefault
			sc.Apparmor = runtimeDefault
			sc.ApparmorProfile = "runtime/default"
			sc.SelinuxOptions = &runtimeapi.SELinuxOption{Type: "spc_t", Level: "s0"}
		}),
	}, {
		name: "the container's settings win",
		mutate: func(pod *corev1.Pod) {
			sc := podSC(pod)
			sc.RunAsUser, sc.RunAsNonRoot = ptrTo[int64](2000), ptrTo(true)
			sc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
			msc := mainSC(pod)
			msc.RunAsUser = ptrTo[int64](3000)
			msc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
			msc.AppArmorProfile = &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeLocalhost, LocalhostProfile: ptrTo("mine")}
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser = &runtimeapi.Int64Value{Value: 3000}
			sc.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "mine"}
			sc.ApparmorProfile = "localhost/mine"
		}),
	}, {
		name: "a localhost seccomp profile is under the node's seccomp root",
		mutate: func(pod *corev1.Pod) {
			mainSC(pod).SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo("profiles/audit.json")}
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/node/seccomp/profiles/audit.json"}
		}),
	}, {
		name: "privileged, read-only root, default procMount",
		mutate: func(pod *corev1.Pod) {
			sc := mainSC(pod)
			sc.Privileged, sc.ReadOnlyRootFilesystem = ptrTo(true), ptrTo(true)
			sc.ProcMount = ptrTo(corev1.DefaultProcMount)
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.Privileged = true
			sc.ReadonlyRootfs = true
		}),
	}, {
		name: "fsGroup, then supplemental groups",
		mutate: func(pod *corev1.Pod) {
			sc := podSC(pod)
			sc.FSGroup = ptrTo[int64](500)
			sc.SupplementalGroups = []int64{600, 700}
			sc.FSGroupChangePolicy = ptrTo(corev1.FSGroupChangeOnRootMismatch)
			sc.SupplementalGroupsPolicy = ptrTo(corev1.SupplementalGroupsPolicyMerge)
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.SupplementalGroups = []int64{500, 600, 700}
		}),
	}, {
		name: "runAsNonRoot with an image of a numeric non-root user",
		node: func(n *node) { n.imageUsers[n.mainImage] = imageUser{uid: ptrTo[int64](65534)} },
		mutate: func(pod *corev1.Pod) {
			mainSC(pod).RunAsNonRoot = ptrTo(true)
		},
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser = &runtimeapi.Int64Value{Value: 65534}
		}),
	}, {
		name: "an image's user by name",
		node: func(n *node) { n.imageUsers[n.mainImage] = imageUser{name: "daemon"} },
		want: want(func(sc *runtimeapi.LinuxContainerSecurityContext) {
			sc.RunAsUser = nil
			sc.RunAsUsername = "daemon"
		}),
	}, {
		name: "no security context at all",
		opts: []Option{WithMainSecurityContext(nil)},
		want: want(func(*runtimeapi.LinuxContainerSecurityContext) {}),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testNode()
			if tt.node != nil {
				tt.node(&n)
			}
			p := mustTranslate(t, n, tt.mutate, tt.opts...)
			equal(t, "main's security context", configOf(t, p, MainContainer).Linux.SecurityContext, tt.want)
		})
	}
}

func TestTranslateSandboxSecurity(t *testing.T) {
	p := mustTranslate(t, testNode(), func(pod *corev1.Pod) {
		sc := podSC(pod)
		sc.RunAsUser, sc.RunAsGroup, sc.FSGroup = ptrTo[int64](10), ptrTo[int64](20), ptrTo[int64](30)
		sc.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
		mainSC(pod).Privileged = ptrTo(true)
	})
	sb := p.sandbox.Linux.SecurityContext
	equal(t, "sandbox RunAsUser", sb.RunAsUser, &runtimeapi.Int64Value{Value: 10})
	equal(t, "sandbox RunAsGroup", sb.RunAsGroup, &runtimeapi.Int64Value{Value: 20})
	equal(t, "sandbox groups", sb.SupplementalGroups, []int64{30})
	equal(t, "sandbox seccomp", sb.Seccomp, &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault})
	if !sb.Privileged {
		t.Error("a pod with a privileged container needs a privileged sandbox")
	}
	equal(t, "emptyDir", p.emptyDirs, []emptyDir{{name: "tasks", path: volumeDir, fsGroup: ptrTo[int64](30)}})
	// The executor gets the pod's user, not the image's.
	equal(t, "executor's user", configOf(t, p, ExecutorContainer).Linux.SecurityContext.RunAsUser, &runtimeapi.Int64Value{Value: 10})
}

func TestTranslateResources(t *testing.T) {
	q := resource.MustParse
	type want struct{ shares, quota, memory, swap, oom int64 }
	tests := []struct {
		name   string
		mutate func(*corev1.Pod)
		opts   []Option
		swap   swapControl
		want   want // main's
	}{{
		name: "memory limit only: burstable, request defaulted to the limit",
		opts: []Option{WithMainMemoryLimit(64 << 20)},
		swap: swapV1,
		// 1000 - 1000*64Mi/8Gi, in integers.
		want: want{shares: 2, memory: 64 << 20, swap: 64 << 20, oom: 993},
	}, {
		name: "cpu limit only: shares from the defaulted request, quota from the limit",
		mutate: func(pod *corev1.Pod) {
			byName(pod, MainContainer).Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: q("500m")}
		},
		want: want{shares: 512, quota: 50000, oom: 999},
	}, {
		name: "cpu request below the limit",
		mutate: func(pod *corev1.Pod) {
			byName(pod, MainContainer).Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: q("250m"), corev1.ResourceMemory: q("1Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1")},
			}
		},
		want: want{shares: 256, quota: 100000, oom: 875},
	}, {
		name: "tiny cpu: the kernel's minimums",
		mutate: func(pod *corev1.Pod) {
			byName(pod, MainContainer).Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: q("1m")}
		},
		want: want{shares: 2, quota: 1000, oom: 999},
	}, {
		name: "every container with equal requests and limits: guaranteed",
		mutate: func(pod *corev1.Pod) {
			for i := range pod.Spec.Containers {
				pod.Spec.Containers[i].Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: q("1"), corev1.ResourceMemory: q("128Mi")}
			}
		},
		swap: swapV2,
		want: want{shares: 1024, quota: 100000, memory: 128 << 20, oom: -997},
	}, {
		name: "a request of the whole node: the lowest burstable score",
		opts: []Option{WithMainMemoryLimit(8 << 30)},
		swap: swapNone,
		want: want{shares: 2, memory: 8 << 30, oom: 3},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := testNode()
			n.swap = tt.swap
			p := mustTranslate(t, n, tt.mutate, tt.opts...)
			r := configOf(t, p, MainContainer).Linux.Resources
			got := want{shares: r.CpuShares, quota: r.CpuQuota, memory: r.MemoryLimitInBytes, swap: r.MemorySwapLimitInBytes, oom: r.OomScoreAdj}
			equal(t, "main's resources", got, tt.want)
			if r.CpuPeriod != 100000 {
				t.Errorf("CpuPeriod %d, want the kubelet's 100000", r.CpuPeriod)
			}
			if wantUnified := tt.swap == swapV2; wantUnified != (r.Unified["memory.swap.max"] == "0") {
				t.Errorf("Unified %v with swap control %d", r.Unified, tt.swap)
			}
		})
	}
}

func TestTranslateMounts(t *testing.T) {
	t.Run("an emptyDir shared by both containers", func(t *testing.T) {
		p := mustTranslate(t, testNode(), func(pod *corev1.Pod) {
			byName(pod, MainContainer).VolumeMounts = []corev1.VolumeMount{{
				Name: "tasks", MountPath: "/seen", ReadOnly: true,
				MountPropagation:  ptrTo(corev1.MountPropagationHostToContainer),
				RecursiveReadOnly: ptrTo(corev1.RecursiveReadOnlyDisabled),
			}}
		})
		equal(t, "main's mounts", configOf(t, p, MainContainer).Mounts, []*runtimeapi.Mount{{
			ContainerPath: "/seen", HostPath: volumeDir, Readonly: true,
			Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER,
		}})
		equal(t, "executor's mount", configOf(t, p, ExecutorContainer).Mounts[0].HostPath, volumeDir)
	})
	t.Run("a data directory below the mount", func(t *testing.T) {
		p := mustTranslate(t, testNode(), nil, WithExecutorArgs("--data-dir", "/var/lib/sandbox/tasks/sub"))
		equal(t, "dataDir", p.dataDir, volumeDir+"/sub")
	})
	t.Run("executor's env and args", func(t *testing.T) {
		p := mustTranslate(t, testNode(), nil, WithExecutorArgs("--log-level=debug"), WithExecutorEnv("A", "1"), WithExecutorEnv("A", "2"))
		cfg := configOf(t, p, ExecutorContainer)
		equal(t, "last arg", cfg.Args[len(cfg.Args)-1], "--log-level=debug")
		equal(t, "env", cfg.Envs[len(cfg.Envs)-1:], []*runtimeapi.KeyValue{{Key: "A", Value: []byte("2")}})
		for _, kv := range cfg.Envs[:len(cfg.Envs)-1] {
			if kv.Key == "A" {
				t.Errorf("A is set twice: %v", cfg.Envs)
			}
		}
	})
}

// TestTranslateRefuses: what the fixture cannot run as a kubelet would is
// an error naming it, never silently dropped.
func TestTranslateRefuses(t *testing.T) {
	main := func(f func(*corev1.Container)) func(*corev1.Pod) {
		return func(pod *corev1.Pod) { f(byName(pod, MainContainer)) }
	}
	executor := func(f func(*corev1.Container)) func(*corev1.Pod) {
		return func(pod *corev1.Pod) { f(byName(pod, ExecutorContainer)) }
	}
	tests := []struct {
		name, want string
		mutate     func(*corev1.Pod)
		opts       []Option
	}{
		{name: "hostPath volume", want: "only emptyDir", mutate: func(pod *corev1.Pod) {
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		}},
		{name: "projected volume", want: "only emptyDir", mutate: func(pod *corev1.Pod) {
			pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}})
		}},
		{name: "emptyDir in memory", want: "spec.volumes[0].emptyDir.medium", mutate: func(pod *corev1.Pod) {
			pod.Spec.Volumes[0].EmptyDir.Medium = corev1.StorageMediumMemory
		}},
		{name: "emptyDir size limit", want: "spec.volumes[0].emptyDir.sizeLimit", mutate: func(pod *corev1.Pod) {
			pod.Spec.Volumes[0].EmptyDir.SizeLimit = ptrTo(resource.MustParse("1Gi"))
		}},
		{name: "a second volume source beside emptyDir", want: "spec.volumes[0].hostPath", mutate: func(pod *corev1.Pod) {
			pod.Spec.Volumes[0].HostPath = &corev1.HostPathVolumeSource{Path: "/x"}
		}},
		{name: "env from a field", want: "spec.containers[0].env[1].valueFrom", mutate: main(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}})
		})},
		{name: "envFrom", want: "spec.containers[0].envFrom", mutate: main(func(c *corev1.Container) {
			c.EnvFrom = []corev1.EnvFromSource{{Prefix: "X"}}
		})},
		{name: "env expansion", want: "$(VAR) expansion", mutate: main(func(c *corev1.Container) {
			c.Env = append(c.Env, corev1.EnvVar{Name: "B", Value: "$(SANDBOX_MAIN_CONTAINER)"})
		})},
		{name: "command expansion", want: "$(VAR) expansion", opts: []Option{WithMainCommand("echo", "$(HOME)")}},
		{name: "unmasked /proc", want: "spec.containers[0].securityContext.procMount", mutate: func(pod *corev1.Pod) {
			mainSC(pod).ProcMount = ptrTo(corev1.UnmaskedProcMount)
		}},
		{name: "windows options", want: "spec.containers[1].securityContext.windowsOptions.runAsUserName", mutate: executor(func(c *corev1.Container) {
			c.SecurityContext.WindowsOptions = &corev1.WindowsSecurityContextOptions{RunAsUserName: ptrTo("x")}
		})},
		{name: "empty windows options", want: "spec.containers[1].securityContext.windowsOptions", mutate: executor(func(c *corev1.Container) {
			c.SecurityContext.WindowsOptions = &corev1.WindowsSecurityContextOptions{}
		})},
		{name: "no escalation yet privileged", want: "contradicts privileged", mutate: func(pod *corev1.Pod) {
			sc := mainSC(pod)
			sc.Privileged, sc.AllowPrivilegeEscalation = ptrTo(true), ptrTo(false)
		}},
		{name: "no escalation yet SYS_ADMIN", want: "contradicts adding SYS_ADMIN", mutate: executor(func(c *corev1.Container) {
			c.SecurityContext.AllowPrivilegeEscalation = ptrTo(false)
		})},
		{name: "runAsNonRoot as root", want: "runAsNonRoot", mutate: func(pod *corev1.Pod) {
			podSC(pod).RunAsNonRoot = ptrTo(true)
		}},
		{name: "runAsNonRoot with uid 0", want: "runAsNonRoot", mutate: func(pod *corev1.Pod) {
			sc := mainSC(pod)
			sc.RunAsNonRoot, sc.RunAsUser = ptrTo(true), ptrTo[int64](0)
		}},
		{name: "seccomp Localhost without a profile", want: "needs localhostProfile", mutate: func(pod *corev1.Pod) {
			mainSC(pod).SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost}
		}},
		{name: "seccomp profile outside the root", want: "relative path", mutate: func(pod *corev1.Pod) {
			mainSC(pod).SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo("../x.json")}
		}},
		{name: "unknown seccomp type", want: "unknown type", mutate: func(pod *corev1.Pod) {
			mainSC(pod).SeccompProfile = &corev1.SeccompProfile{Type: "Strict"}
		}},
		{name: "unknown AppArmor type", want: "unknown type", mutate: func(pod *corev1.Pod) {
			mainSC(pod).AppArmorProfile = &corev1.AppArmorProfile{Type: "Strict"}
		}},
		{name: "pod sysctls", want: "spec.securityContext.sysctls", mutate: func(pod *corev1.Pod) {
			podSC(pod).Sysctls = []corev1.Sysctl{{Name: "net.core.somaxconn", Value: "1024"}}
		}},
		{name: "strict supplemental groups", want: "spec.securityContext.supplementalGroupsPolicy", mutate: func(pod *corev1.Pod) {
			podSC(pod).SupplementalGroupsPolicy = ptrTo(corev1.SupplementalGroupsPolicyStrict)
		}},
		{name: "liveness probe", want: "spec.containers[0].livenessProbe", mutate: main(func(c *corev1.Container) {
			c.LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		})},
		{name: "exec readiness probe", want: "spec.containers[0].readinessProbe.exec.command", mutate: main(func(c *corev1.Container) {
			c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
		})},
		{name: "readiness probe with a host", want: "spec.containers[1].readinessProbe.httpGet.host", mutate: executor(func(c *corev1.Container) {
			c.ReadinessProbe.HTTPGet.Host = "example.com"
		})},
		{name: "readiness probe with headers", want: "readinessProbe.httpGet.httpHeaders", mutate: executor(func(c *corev1.Container) {
			c.ReadinessProbe.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{{Name: "X", Value: "y"}}
		})},
		{name: "readiness probe on another port", want: "not the executor's --listen-addr port", mutate: executor(func(c *corev1.Container) {
			c.ReadinessProbe.HTTPGet.Port = intstr.FromInt32(9999)
		})},
		{name: "readiness probe on an unknown port name", want: `no container port named "metrics"`, mutate: executor(func(c *corev1.Container) {
			c.ReadinessProbe.HTTPGet.Port = intstr.FromString("metrics")
		})},
		{name: "lifecycle hook", want: "spec.containers[1].lifecycle", mutate: executor(func(c *corev1.Container) {
			c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 1}}}
		})},
		{name: "subPath", want: "spec.containers[1].volumeMounts[0].subPath", mutate: executor(func(c *corev1.Container) {
			c.VolumeMounts[0].SubPath = "x"
		})},
		{name: "a volume the pod lacks", want: `no volume "other"`, mutate: executor(func(c *corev1.Container) {
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: "other", MountPath: "/o"})
		})},
		{name: "bidirectional propagation unprivileged", want: "needs a privileged container", mutate: executor(func(c *corev1.Container) {
			c.VolumeMounts[0].MountPropagation = ptrTo(corev1.MountPropagationBidirectional)
		})},
		{name: "hostPort", want: "spec.containers[1].ports[0].hostPort", mutate: executor(func(c *corev1.Container) {
			c.Ports[0].HostPort = 80
		})},
		{name: "ephemeral storage", want: "spec.containers[0].resources.limits[ephemeral-storage]", mutate: main(func(c *corev1.Container) {
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceEphemeralStorage: resource.MustParse("1Gi")}
		})},
		{name: "huge pages", want: "resources.limits[hugepages-2Mi]", mutate: main(func(c *corev1.Container) {
			c.Resources.Limits = corev1.ResourceList{"hugepages-2Mi": resource.MustParse("2Mi"), corev1.ResourceMemory: resource.MustParse("1Gi")}
		})},
		{name: "request above limit", want: "above the limit", mutate: main(func(c *corev1.Container) {
			c.Resources = corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
			}
		})},
		{name: "resize policy", want: "spec.containers[0].resizePolicy", mutate: main(func(c *corev1.Container) {
			c.ResizePolicy = []corev1.ContainerResizePolicy{{ResourceName: corev1.ResourceCPU, RestartPolicy: corev1.NotRequired}}
		})},
		{name: "init container", want: "init and ephemeral containers", mutate: func(pod *corev1.Pod) {
			pod.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "busybox"}}
		}},
		{name: "a third container", want: "no image for it here", mutate: func(pod *corev1.Pod) {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "extra", Image: "nginx"})
		}},
		{name: "two executors", want: "both run the executor's image", mutate: func(pod *corev1.Pod) {
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "again", Image: "task-executor:latest"})
		}},
		{name: "main renamed", want: `main container is "box"`, mutate: func(pod *corev1.Pod) {
			byName(pod, MainContainer).Name = "box"
			c := byName(pod, ExecutorContainer)
			c.Args = setFlag(c.Args, "main-container-name", "box")
		}},
		{name: "executor renamed", want: `the executor's container is "sidecar"`, mutate: executor(func(c *corev1.Container) {
			c.Name = "sidecar"
		})},
		{name: "data directory on no volume", want: "on no emptyDir", opts: []Option{WithExecutorArgs("--data-dir=/data")}},
		{name: "listen address from a test", want: "sets --listen-addr itself", opts: []Option{WithExecutorArgs("--listen-addr=0.0.0.0:1")}},
		{name: "node selector", want: "spec.nodeSelector[disk]", mutate: func(pod *corev1.Pod) {
			pod.Spec.NodeSelector = map[string]string{"disk": "ssd"}
		}},
		{name: "host aliases", want: "spec.hostAliases", mutate: func(pod *corev1.Pod) {
			pod.Spec.HostAliases = []corev1.HostAlias{{IP: "10.0.0.1", Hostnames: []string{"a"}}}
		}},
		{name: "runtime class", want: "spec.runtimeClassName", mutate: func(pod *corev1.Pod) {
			pod.Spec.RuntimeClassName = ptrTo("gvisor")
		}},
		{name: "DNS policy None", want: "spec.dnsPolicy", mutate: func(pod *corev1.Pod) {
			pod.Spec.DNSPolicy = corev1.DNSNone
		}},
		{name: "user namespaces", want: "spec.hostUsers", mutate: func(pod *corev1.Pod) {
			pod.Spec.HostUsers = ptrTo(false)
		}},
		{name: "shared PID and host PID", want: "exclusive", mutate: func(pod *corev1.Pod) {
			pod.Spec.HostPID = true
		}},
		{name: "a status", want: "status.phase", mutate: func(pod *corev1.Pod) {
			pod.Status.Phase = corev1.PodRunning
		}},
		{name: "generateName", want: "metadata.generateName", mutate: func(pod *corev1.Pod) {
			pod.GenerateName = "x-"
		}},
		{name: "an annotation the kubelet reads", want: "metadata.annotations[container.apparmor.security.beta.kubernetes.io/main]", mutate: func(pod *corev1.Pod) {
			pod.Annotations = map[string]string{"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}
		}},
		{name: "another kind", want: `kind "Deployment"`, mutate: func(pod *corev1.Pod) {
			pod.Kind = "Deployment"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := translateWith(t, testNode(), tt.mutate, tt.opts...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("translate: %v; want an error mentioning %q", err, tt.want)
			}
			t.Log(err)
		})
	}
}

// TestTranslateAccepts: settings with the same effect here as on a node
// are taken, not refused.
func TestTranslateAccepts(t *testing.T) {
	p := mustTranslate(t, testNode(), func(pod *corev1.Pod) {
		pod.Namespace = "tenant"
		pod.UID = "given-uid"
		pod.Annotations = map[string]string{"example.com/owner": "tests"}
		s := &pod.Spec
		s.RestartPolicy = corev1.RestartPolicyNever
		s.TerminationGracePeriodSeconds = ptrTo[int64](5)
		s.DNSPolicy = corev1.DNSClusterFirst
		s.HostNetwork = true
		s.EnableServiceLinks = ptrTo(false)
		s.AutomountServiceAccountToken = ptrTo(false)
		s.OS = &corev1.PodOS{Name: corev1.Linux}
		s.HostUsers = ptrTo(true)
		c := byName(pod, ExecutorContainer)
		c.ImagePullPolicy = corev1.PullIfNotPresent
		c.TerminationMessagePath = "/dev/termination-log"
		c.TerminationMessagePolicy = corev1.TerminationMessageReadFile
		c.Ports[0].Protocol = corev1.ProtocolTCP
		c.ReadinessProbe.HTTPGet.Scheme = corev1.URISchemeHTTP
		c.ReadinessProbe.PeriodSeconds = 1
		c.ReadinessProbe.FailureThreshold = 3
		c.WorkingDir = "/"
		c.Stdin, c.TTY = true, true
	})
	equal(t, "metadata", p.sandbox.Metadata, &runtimeapi.PodSandboxMetadata{Name: "sandbox", Namespace: "tenant", Uid: "given-uid"})
	equal(t, "annotations", p.sandbox.Annotations, map[string]string{"example.com/owner": "tests"})
	equal(t, "grace", p.grace, 5*time.Second)
	cfg := configOf(t, p, ExecutorContainer)
	equal(t, "workingDir", cfg.WorkingDir, "/")
	if !cfg.Stdin || !cfg.Tty {
		t.Error("stdin and tty were dropped")
	}
	equal(t, "grace annotation", cfg.Annotations["io.kubernetes.pod.terminationGracePeriod"], "5")
}

// TestExecutorReadyWithoutProbe: Start's promise of an executor that
// answers holds even if the manifest loses its readiness probe.
func TestExecutorReadyWithoutProbe(t *testing.T) {
	p := mustTranslate(t, testNode(), func(pod *corev1.Pod) {
		byName(pod, ExecutorContainer).ReadinessProbe = nil
	})
	if got := p.containers[1].readyPath; got != "/health" {
		t.Fatalf("the executor's readiness path without a probe: %q, want /health", got)
	}
}

// TestTranslateLeavesThePodAlone: the caller's pod is not consumed.
func TestTranslateLeavesThePodAlone(t *testing.T) {
	pod := readManifest(t)
	before := pod.DeepCopy()
	if _, err := translate(pod, testNode(), options{}); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(pod, before) {
		t.Fatal("translate changed its argument")
	}
}

func TestParseManifest(t *testing.T) {
	tests := []struct{ name, manifest, want string }{
		{name: "unknown field", want: `unknown field "commands"`, manifest: `
apiVersion: v1
kind: Pod
metadata: {name: x}
spec:
  containers:
    - name: main
      commands: [sleep]
`},
		{name: "duplicate key", want: `"name" already set`, manifest: `
apiVersion: v1
kind: Pod
metadata: {name: x, name: y}
`},
		{name: "two documents", want: "2 documents", manifest: `
apiVersion: v1
kind: Pod
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: y}
`},
		{name: "nothing", want: "0 documents", manifest: "# only a comment\n---\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseManifest([]byte(tt.manifest))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseManifest: %v; want an error mentioning %q", err, tt.want)
			}
		})
	}
	t.Run("comments and a separator around one pod", func(t *testing.T) {
		pod, err := parseManifest([]byte("# a pod\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"))
		if err != nil || pod.Name != "x" {
			t.Fatalf("parseManifest: %v, %v", pod, err)
		}
	})
}

func TestSetFields(t *testing.T) {
	c := corev1.Container{
		Name:            "c",
		SecurityContext: &corev1.SecurityContext{},
		Resources:       corev1.ResourceRequirements{Limits: corev1.ResourceList{"b": resource.MustParse("1"), "a": resource.MustParse("1")}},
		ReadinessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(1)}}},
		Env:             []corev1.EnvVar{{}, {Value: "v"}},
		Command:         []string{},
	}
	got := setFields("c", c)
	want := []string{
		"c.name", "c.env[1].value", "c.resources.limits[a,b]",
		"c.readinessProbe.httpGet.port", "c.securityContext",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("setFields:\n got %q\nwant %q", got, want)
	}
}

func TestFlags(t *testing.T) {
	tests := []struct {
		args      []string
		value     string
		found     bool
		setResult []string
	}{
		{args: nil, setResult: []string{"--listen-addr=X"}},
		{args: []string{"--listen-addr=a"}, value: "a", found: true, setResult: []string{"--listen-addr=X"}},
		{args: []string{"-listen-addr", "a", "--listen-addr=b"}, value: "b", found: true, setResult: []string{"-listen-addr", "X", "--listen-addr=X"}},
		{args: []string{"--listen-address=a", "listen-addr=b"}, setResult: []string{"--listen-address=a", "listen-addr=b", "--listen-addr=X"}},
		{args: []string{"--listen-addr"}, setResult: []string{"--listen-addr", "--listen-addr=X"}},
	}
	for _, tt := range tests {
		v, ok := flagValue(tt.args, "listen-addr")
		if v != tt.value || ok != tt.found {
			t.Errorf("flagValue(%q) = %q, %v; want %q, %v", tt.args, v, ok, tt.value, tt.found)
		}
		if got := setFlag(tt.args, "listen-addr", "X"); !slices.Equal(got, tt.setResult) {
			t.Errorf("setFlag(%q) = %q, want %q", tt.args, got, tt.setResult)
		}
	}
}

func TestHugePageSizeNames(t *testing.T) {
	for _, s := range hugePageSizes() {
		if !strings.HasSuffix(s, "B") || strings.Trim(s, "0123456789KMGTPB") != "" {
			t.Errorf("huge page size %q is not in the CRI's notation (2MB, 1GB)", s)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMountinfo(`/tmp/a\040b\011c\134d`); got != "/tmp/a b\tc\\d" {
		t.Errorf("unescapeMountinfo = %q", got)
	}
}
