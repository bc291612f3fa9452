// Package podtest runs examples/k8s/sidecar-pod.yaml as a real pod on the
// private containerd of internal/containerdtest, for tests of sidecar mode
// that need real containers: the executor in its image, in a pod whose
// main container it enters, as a kubelet would run them.
//
//	func TestMain(m *testing.M) { os.Exit(containerdtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		env := containerdtest.Require(t)
//		pod := podtest.Start(t.Context(), t, env)
//		// HTTP on pod.URL(); pod.Exec(ctx, podtest.MainContainer, "id") ...
//	}
//
// The fixture reads the manifest and derives the CRI requests from it as a
// tiny kubelet: the sandbox's namespaces, each container's command, env,
// security context, resources and emptyDir mounts, the readiness probe it
// waits for. A field it does not know how to carry over fails Start, so
// the manifest and the pod the tests run cannot drift apart.
//
// Where it departs from what a kubelet on a real node would run:
//   - Images: nothing can be pulled, so the main container runs the busybox
//     image of containerdtest (not the manifest's), and the executor's
//     container runs ExecutorImage, built from this tree once per test
//     binary (hack/executor-image.sh).
//   - Network: the node's, for every pod (there is no CNI here), and with
//     containerd that means the node's UTS namespace (hostname) too. The
//     executor listens on 127.0.0.1 and a free port instead of the
//     manifest's --listen-addr; its readiness probe follows it there.
//   - No API server: no service-account token, no Service environment
//     variables, no termination-message file, no /etc/hosts of the pod's;
//     no pod-level cgroup (each container's is directly under the
//     runtime's).
//   - Restarts happen only when a test asks (RestartContainer), never on
//     their own; probes other than an HTTP readiness probe on the
//     executor's API are refused, as are $(VAR) references.
//   - Confinement the machine lacks: containerdtest's containerd runs with
//     AppArmor off (an Unconfined profile is passed on and changes nothing;
//     containerd 1.6 refuses any other), and a Localhost seccomp profile is
//     looked up under the fixture's own directory, where nothing puts one.
//   - The Options below, each a deviation a test asks for.
package podtest

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
)

// The names the manifest gives its two containers. Start fails if the
// manifest no longer agrees, so a test cannot address the wrong one.
const (
	MainContainer     = "main"
	ExecutorContainer = "task-executor"
)

// ManifestPath is the manifest the fixture runs, from the repository's root.
const ManifestPath = "examples/k8s/sidecar-pod.yaml"

const (
	// For a pod to start once its images are there (about a second here).
	startTimeout = 2 * time.Minute
	// For an operation on a running pod given a context without a deadline
	// (beyond the grace period of a stop).
	opTimeout = 2 * time.Minute
	// For the teardown, and for each process to be gone after it.
	teardownTimeout = time.Minute
	goneTimeout     = 10 * time.Second
	pollEvery       = 20 * time.Millisecond
	// The most of a container's log a failing test prints.
	logTail = 64 << 10
)

// Option is a deviation from the manifest a test needs; each says what it
// changes.
type Option func(*options)

type options struct {
	executorArgs    []string
	executorEnv     []corev1.EnvVar
	mainSecurity    *corev1.SecurityContext
	mainSecuritySet bool
	mainMemory      *int64
	mainCommand     []string
	execSeccomp     *corev1.SeccompProfile
}

// WithExecutorArgs appends args to the executor's (as the flag package
// reads them, a later flag wins over the manifest's). --listen-addr is the
// fixture's and may not be given.
func WithExecutorArgs(args ...string) Option {
	return func(o *options) { o.executorArgs = append(o.executorArgs, args...) }
}

// WithExecutorEnv adds an environment variable to the executor's container
// (or replaces the manifest's of that name).
func WithExecutorEnv(name, value string) Option {
	return func(o *options) { o.executorEnv = append(o.executorEnv, corev1.EnvVar{Name: name, Value: value}) }
}

// WithExecutorSeccompProfile replaces the executor container's
// securityContext.seccompProfile (to see what the executor does where it
// runs under a filter of its own).
func WithExecutorSeccompProfile(p corev1.SeccompProfile) Option {
	return func(o *options) { o.execSeccomp = p.DeepCopy() }
}

// WithMainSecurityContext replaces the main container's securityContext
// (nil: none). The pod's securityContext still provides defaults, as in
// Kubernetes.
func WithMainSecurityContext(sc *corev1.SecurityContext) Option {
	return func(o *options) { o.mainSecurity, o.mainSecuritySet = sc.DeepCopy(), true }
}

// WithMainMemoryLimit sets the main container's resources.limits.memory
// (and so its memory request, which Kubernetes defaults to the limit).
func WithMainMemoryLimit(bytes int64) Option {
	return func(o *options) { o.mainMemory = &bytes }
}

// WithMainCommand replaces the main container's command and drops its
// args.
func WithMainCommand(command ...string) Option {
	return func(o *options) { o.mainCommand = append([]string{}, command...) }
}

// Pod is a running pod of the manifest. Its methods may be called from any
// goroutine, but not two that change the same container at once.
type Pod struct {
	t         testing.TB
	conn      *grpc.ClientConn
	rt        runtimeapi.RuntimeServiceClient
	plan      *plan
	node      node
	dir       string
	sandboxID string

	mu   sync.Mutex
	ctrs map[string]*ctrState
}

// ctrState is what the fixture knows of one of the manifest's containers.
type ctrState struct {
	plan    *containerPlan
	id      string // the current attempt's
	attempt uint32
	ids     []string // every attempt's, oldest first
	// As UpdateMemory last set them: the next update starts from them.
	resources *runtimeapi.LinuxContainerResources
}

// ExecResult is what a command run by Exec did.
type ExecResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// Start runs the manifest's pod, with opts, on env's containerd and returns
// once every container runs and the executor answers its readiness probe.
// The pod is removed when t ends, and t fails if anything of it is left
// then: a container, a process, a mount. On failure t's log gets the
// containers' logs.
func Start(ctx context.Context, t testing.TB, env *containerdtest.Env, opts ...Option) *Pod {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	root, err := containerdtest.RepoRoot()
	if err != nil {
		t.Fatalf("podtest: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(root, ManifestPath))
	if err != nil {
		t.Fatalf("podtest: reading the manifest: %v", err)
	}
	manifest, err := parseManifest(data)
	if err != nil {
		t.Fatalf("podtest: %s: %v", ManifestPath, err)
	}
	// A manifest the fixture cannot run fails before the image is built.
	dry := node{dir: "/", podUID: "dry-run", mainImage: env.BusyboxImage, executorImage: ExecutorImage, listenAddr: "127.0.0.1:1"}
	if _, err := translate(manifest, dry, o); err != nil {
		t.Fatalf("podtest: %s: %v", ManifestPath, err)
	}

	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("podtest: dialing the CRI socket %s: %v", env.Socket, err)
	}
	// Registered first, so closed after the teardown that uses it.
	t.Cleanup(func() { conn.Close() })
	images := runtimeapi.NewImageServiceClient(conn)
	if err := ensureExecutorImage(ctx, t, env, images); err != nil {
		t.Fatalf("podtest: %v", err)
	}

	ctx, cancel := withDefaultTimeout(ctx, startTimeout)
	defer cancel()
	dir := t.TempDir()
	n, err := nodeFor(ctx, dir, env, images)
	if err != nil {
		t.Fatalf("podtest: %v", err)
	}
	pl, err := translate(manifest, n, o)
	if err != nil {
		t.Fatalf("podtest: %s: %v", ManifestPath, err)
	}
	p := &Pod{t: t, conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), plan: pl, node: n, dir: dir, ctrs: map[string]*ctrState{}}
	for _, cp := range pl.containers {
		p.ctrs[cp.name] = &ctrState{plan: cp, resources: proto.Clone(cp.config.Linux.Resources).(*runtimeapi.LinuxContainerResources)}
	}
	t.Cleanup(p.teardown)

	start := time.Now()
	if err := p.run(ctx); err != nil {
		t.Fatalf("podtest: starting the pod: %v", err)
	}
	t.Logf("podtest: pod %s ready in %s; executor at %s", pl.sandbox.Metadata.Name, time.Since(start).Round(time.Millisecond), pl.url)
	return p
}

// nodeFor is the node the pod runs on: this machine, with the fixture's
// directory and a port of its own.
func nodeFor(ctx context.Context, dir string, env *containerdtest.Env, images runtimeapi.ImageServiceClient) (node, error) {
	n := node{dir: dir, mainImage: env.BusyboxImage, executorImage: ExecutorImage, imageUsers: map[string]imageUser{}}
	var uid [16]byte
	if _, err := rand.Read(uid[:]); err != nil {
		return n, fmt.Errorf("while making the pod's UID: %w", err)
	}
	uid[6] = uid[6]&0x0f | 0x40 // a version 4 UUID, as the API server makes
	uid[8] = uid[8]&0x3f | 0x80
	n.podUID = fmt.Sprintf("%x-%x-%x-%x-%x", uid[0:4], uid[4:6], uid[6:8], uid[8:10], uid[10:])
	for _, img := range []string{n.mainImage, n.executorImage} {
		st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: img}})
		if err != nil {
			return n, fmt.Errorf("while asking for the user of image %s: %w", img, err)
		}
		if st.GetImage() == nil {
			return n, fmt.Errorf("image %s is not in the runtime", img)
		}
		u := imageUser{name: st.Image.Username}
		if st.Image.Uid != nil {
			v := st.Image.Uid.Value
			u = imageUser{uid: &v}
		}
		n.imageUsers[img] = u
	}
	port, err := freePort()
	if err != nil {
		return n, err
	}
	n.listenAddr = "127.0.0.1:" + strconv.Itoa(port)
	if n.memory, err = memoryCapacity(); err != nil {
		return n, err
	}
	n.hugePageSizes = hugePageSizes()
	n.swap = swapController()
	return n, nil
}

// run makes the directories a kubelet would, then the sandbox, then each
// container in the manifest's order, and waits for all to be ready.
func (p *Pod) run(ctx context.Context) error {
	for _, d := range p.plan.emptyDirs {
		if err := makeEmptyDir(d); err != nil {
			return err
		}
	}
	for _, cp := range p.plan.containers {
		if err := os.MkdirAll(filepath.Join(p.plan.sandbox.LogDirectory, cp.name), 0o755); err != nil {
			return fmt.Errorf("while making the log directory of %s: %w", cp.name, err)
		}
	}
	resp, err := p.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: p.plan.sandbox})
	if err != nil {
		return fmt.Errorf("RunPodSandbox: %w", err)
	}
	p.mu.Lock()
	p.sandboxID = resp.PodSandboxId
	p.mu.Unlock()
	for _, cp := range p.plan.containers {
		if err := p.createAndStart(ctx, cp.name, 0); err != nil {
			return err
		}
	}
	for _, cp := range p.plan.containers {
		if err := p.waitReady(ctx, cp.name); err != nil {
			return err
		}
	}
	// A container that exits at once may have looked running while the
	// others were awaited; a test would rather hear of it here.
	for _, cp := range p.plan.containers {
		st, err := p.Status(ctx, cp.name)
		if err != nil {
			return err
		}
		if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			return p.exited(cp.name, st)
		}
	}
	return nil
}

// makeEmptyDir makes an emptyDir's directory as the kubelet does: mode 0777
// whatever the umask, and with an fsGroup owned by that group and setgid,
// so that files made in it belong to the group.
func makeEmptyDir(d emptyDir) error {
	if err := os.MkdirAll(d.path, 0o777); err != nil {
		return fmt.Errorf("while making emptyDir %s: %w", d.name, err)
	}
	mode := os.FileMode(0o777)
	if d.fsGroup != nil {
		if err := os.Chown(d.path, -1, int(*d.fsGroup)); err != nil {
			return fmt.Errorf("while giving emptyDir %s to fsGroup %d: %w", d.name, *d.fsGroup, err)
		}
		mode |= os.ModeSetgid
	}
	if err := os.Chmod(d.path, mode); err != nil {
		return fmt.Errorf("while setting the mode of emptyDir %s: %w", d.name, err)
	}
	return nil
}

// createAndStart makes attempt of a container from its config, as the
// kubelet makes each attempt afresh (a stopped CRI container cannot start
// again), and starts it.
func (p *Pod) createAndStart(ctx context.Context, name string, attempt uint32) error {
	p.mu.Lock()
	c := p.ctrs[name]
	sandboxID := p.sandboxID
	p.mu.Unlock()
	cfg := proto.Clone(c.plan.config).(*runtimeapi.ContainerConfig)
	cfg.Metadata.Attempt = attempt
	cfg.LogPath = filepath.Join(name, fmt.Sprintf("%d.log", attempt))
	cfg.Annotations["io.kubernetes.container.restartCount"] = strconv.FormatUint(uint64(attempt), 10)
	created, err := p.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandboxID, Config: cfg, SandboxConfig: p.plan.sandbox})
	if err != nil {
		return fmt.Errorf("CreateContainer %s (attempt %d): %w", name, attempt, err)
	}
	p.mu.Lock()
	c.id, c.attempt = created.ContainerId, attempt
	c.ids = append(c.ids, created.ContainerId)
	c.resources = proto.Clone(c.plan.config.Linux.Resources).(*runtimeapi.LinuxContainerResources)
	p.mu.Unlock()
	if _, err := p.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer %s (attempt %d): %w", name, attempt, err)
	}
	return nil
}

// waitReady waits for a container to run and, if it has a readiness probe,
// for the probe to succeed (a 2xx or 3xx answer, as the kubelet counts it).
func (p *Pod) waitReady(ctx context.Context, name string) error {
	err := poll(ctx, func() (bool, error) {
		st, err := p.Status(ctx, name)
		if err != nil {
			return false, err
		}
		switch st.State {
		case runtimeapi.ContainerState_CONTAINER_RUNNING:
			return true, nil
		case runtimeapi.ContainerState_CONTAINER_EXITED:
			return false, permanent{p.exited(name, st)}
		}
		return false, fmt.Errorf("state %s", st.State)
	})
	if err != nil {
		return fmt.Errorf("waiting for %s to run: %w", name, err)
	}
	path := p.ctrState(name).plan.readyPath
	if path == "" {
		return nil
	}
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	err = poll(ctx, func() (bool, error) {
		if st, err := p.Status(ctx, name); err == nil && st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return false, permanent{p.exited(name, st)}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.plan.url+path, nil)
		if err != nil {
			return false, permanent{err}
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return false, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s's readiness probe (GET %s%s): %w", name, p.plan.url, path, err)
	}
	return nil
}

// exited says a container is no longer running, why, and what it wrote.
func (p *Pod) exited(name string, st *runtimeapi.ContainerStatus) error {
	return fmt.Errorf("%s exited with %d (%s %s); its log:\n%s", name, st.ExitCode, st.Reason, st.Message, p.Logs(name))
}

// URL is the executor's API, e.g. "http://127.0.0.1:12345".
func (p *Pod) URL() string { return p.plan.url }

// DataDir is the node's directory behind the executor's --data-dir (on the
// manifest's emptyDir: the same across restarts of the container).
func (p *Pod) DataDir() string { return p.plan.dataDir }

// SandboxID is the pod sandbox's CRI ID.
func (p *Pod) SandboxID() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sandboxID
}

// Runtime is the CRI runtime service the pod runs on, for what the
// methods here do not cover.
func (p *Pod) Runtime() runtimeapi.RuntimeServiceClient { return p.rt }

// ContainerID is the CRI ID of the current attempt of the named container
// ("" if the manifest has none of that name).
func (p *Pod) ContainerID(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.ctrs[name]; c != nil {
		return c.id
	}
	return ""
}

func (p *Pod) ctrState(name string) *ctrState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ctrs[name]
}

func (p *Pod) currentID(name string) (string, error) {
	if id := p.ContainerID(name); id != "" {
		return id, nil
	}
	return "", fmt.Errorf("the pod has no container %q", name)
}

// Status is the CRI status of the named container's current attempt
// (Metadata.Attempt counts its restarts).
func (p *Pod) Status(ctx context.Context, name string) (*runtimeapi.ContainerStatus, error) {
	id, err := p.currentID(name)
	if err != nil {
		return nil, err
	}
	resp, err := p.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return nil, fmt.Errorf("ContainerStatus %s: %w", name, err)
	}
	return resp.Status, nil
}

// Exec runs cmd in the named container as `crictl exec` and `kubectl exec`
// do (CRI ExecSync), and returns its output and exit code. An error is the
// runtime's, not the command's (a command that cannot be started at all is
// one, as with crictl); ctx's deadline, if any, is also the command's
// timeout.
func (p *Pod) Exec(ctx context.Context, container string, cmd ...string) (ExecResult, error) {
	id, err := p.currentID(container)
	if err != nil {
		return ExecResult{}, err
	}
	var timeout int64
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(1, int64(math.Ceil(time.Until(dl).Seconds())))
	}
	resp, err := p.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
	if err != nil {
		return ExecResult{}, fmt.Errorf("ExecSync %q in %s: %w", cmd, container, err)
	}
	return ExecResult{Stdout: resp.Stdout, Stderr: resp.Stderr, ExitCode: int(resp.ExitCode)}, nil
}

// PID is the node's PID of the named container's init process.
func (p *Pod) PID(ctx context.Context, container string) (int, error) {
	id, err := p.currentID(container)
	if err != nil {
		return 0, err
	}
	return containerPID(ctx, p.rt, id)
}

func containerPID(ctx context.Context, rt runtimeapi.RuntimeServiceClient, id string) (int, error) {
	resp, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("ContainerStatus %s: %w", id, err)
	}
	if st := resp.Status.State; st != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return 0, fmt.Errorf("container %s is %s, and only a running one has a PID", id, st)
	}
	return infoPID(resp.Info)
}

// infoPID reads the "pid" containerd puts in a verbose status's info.
func infoPID(info map[string]string) (int, error) {
	var v struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(info["info"]), &v); err != nil {
		return 0, fmt.Errorf("while reading the PID in the runtime's verbose status: %w", err)
	}
	if v.Pid <= 0 {
		return 0, errors.New("the runtime's verbose status holds no PID")
	}
	return v.Pid, nil
}

// StopContainer stops the named container as the kubelet does: SIGTERM,
// SIGKILL after grace (rounded up to whole seconds, the CRI's unit), and
// returns once it has exited.
func (p *Pod) StopContainer(ctx context.Context, name string, grace time.Duration) error {
	id, err := p.currentID(name)
	if err != nil {
		return err
	}
	ctx, cancel := withDefaultTimeout(ctx, opTimeout+grace)
	defer cancel()
	secs := int64(math.Ceil(grace.Seconds()))
	if _, err := p.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: secs}); err != nil {
		return fmt.Errorf("StopContainer %s: %w", name, err)
	}
	err = poll(ctx, func() (bool, error) {
		st, err := p.Status(ctx, name)
		if err != nil {
			return false, err
		}
		return st.State == runtimeapi.ContainerState_CONTAINER_EXITED, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for %s to exit: %w", name, err)
	}
	return nil
}

// RestartContainer restarts the named container as the kubelet does:
// stops it if it runs (with the pod's termination grace period), creates
// the next attempt from the same config (on the same emptyDirs), starts it
// and waits for it to be ready, the executor's for its readiness probe. A
// memory limit set by UpdateMemory is not carried over, as with `crictl
// update`.
func (p *Pod) RestartContainer(ctx context.Context, name string) error {
	ctx, cancel := withDefaultTimeout(ctx, opTimeout+p.plan.grace)
	defer cancel()
	st, err := p.Status(ctx, name)
	if err != nil {
		return err
	}
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		if err := p.StopContainer(ctx, name, p.plan.grace); err != nil {
			return err
		}
	}
	if err := p.createAndStart(ctx, name, st.Metadata.Attempt+1); err != nil {
		return err
	}
	return p.waitReady(ctx, name)
}

// UpdateMemory changes the named container's memory limit while it runs,
// as `crictl update --memory` does (UpdateContainerResources), keeping swap
// off as the kubelet does, and returns once the kernel applies it.
func (p *Pod) UpdateMemory(ctx context.Context, name string, bytes int64) error {
	if bytes <= 0 {
		return fmt.Errorf("UpdateMemory %s: %d bytes: a limit must be positive", name, bytes)
	}
	ctx, cancel := withDefaultTimeout(ctx, opTimeout)
	defer cancel()
	id, err := p.currentID(name)
	if err != nil {
		return err
	}
	p.mu.Lock()
	res := proto.Clone(p.ctrs[name].resources).(*runtimeapi.LinuxContainerResources)
	p.mu.Unlock()
	res.MemoryLimitInBytes = bytes
	setNoSwap(res, p.node.swap)
	if _, err := p.rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id, Linux: res}); err != nil {
		return fmt.Errorf("UpdateContainerResources %s: %w", name, err)
	}
	p.mu.Lock()
	if c := p.ctrs[name]; c.id == id {
		c.resources = res
	}
	p.mu.Unlock()
	pid, err := p.PID(ctx, name)
	if err != nil {
		return err
	}
	// The kernel keeps whole pages.
	want := bytes / int64(os.Getpagesize()) * int64(os.Getpagesize())
	var got int64
	err = poll(ctx, func() (bool, error) {
		got, err = memoryLimit(pid)
		return err == nil && got == want, err
	})
	if err != nil {
		return fmt.Errorf("waiting for %s's memory limit to be %d (it is %d): %w", name, want, got, err)
	}
	return nil
}

// Logs is the named container's CRI log file, of its current attempt, in
// the CRI's format ("<time> <stream> <F|P> <text>" per line). It is meant
// for failure messages: a file that cannot be read gives the reason
// instead.
func (p *Pod) Logs(name string) string {
	c := p.ctrState(name)
	if c == nil {
		return fmt.Sprintf("(the pod has no container %q)", name)
	}
	p.mu.Lock()
	attempt := c.attempt
	p.mu.Unlock()
	return p.logFile(name, attempt)
}

func (p *Pod) logFile(name string, attempt uint32) string {
	b, err := os.ReadFile(filepath.Join(p.plan.sandbox.LogDirectory, name, fmt.Sprintf("%d.log", attempt)))
	if err != nil {
		return fmt.Sprintf("(reading the log: %v)", err)
	}
	return string(b)
}

// teardown removes the pod as the kubelet would on its deletion, then
// checks that the runtime has none of it left and that every process of it
// has ended and nothing is mounted under the fixture's directory; what is
// left fails the test, and is ended or unmounted so nothing outlives it.
func (p *Pod) teardown() {
	t := p.t
	ctx, cancel := context.WithTimeout(context.Background(), teardownTimeout)
	defer cancel()
	if t.Failed() {
		p.logAll()
	}
	procs := p.processes(ctx)

	p.mu.Lock()
	sandboxID := p.sandboxID
	var ids []string
	for _, cp := range p.plan.containers {
		ids = append(ids, p.ctrs[cp.name].ids...)
	}
	p.mu.Unlock()
	// Grace 0: the teardown is not what a test looks at, and a main
	// container ignoring SIGTERM would cost the whole period.
	for _, id := range ids {
		if _, err := p.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil && !isNotFound(err) {
			t.Errorf("podtest: StopContainer %s: %v", id, err)
		}
		if _, err := p.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil && !isNotFound(err) {
			t.Errorf("podtest: RemoveContainer %s: %v", id, err)
		}
	}
	if sandboxID != "" {
		if _, err := p.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandboxID}); err != nil && !isNotFound(err) {
			t.Errorf("podtest: StopPodSandbox: %v", err)
		}
		if _, err := p.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandboxID}); err != nil && !isNotFound(err) {
			t.Errorf("podtest: RemovePodSandbox: %v", err)
		}
		if err := sandboxGone(ctx, p.rt, sandboxID); err != nil {
			t.Errorf("podtest: %v", err)
		}
	}

	if alive := waitGone(procs, goneTimeout); len(alive) > 0 {
		t.Errorf("podtest: processes of the pod still run %s after its removal; killing them: %v", goneTimeout, alive)
		killAll(alive)
	}
	for _, m := range mountsUnder(p.dir) {
		t.Errorf("podtest: %s is still mounted after the pod's removal; unmounting it", m)
		if err := unmount(m); err != nil {
			t.Errorf("podtest: unmounting %s: %v", m, err)
		}
	}
}

// sandboxGone checks the runtime lists neither the sandbox nor any
// container of it. (Listing, not asking for its status: containerd logs
// every status request for an unknown sandbox as an error.)
func sandboxGone(ctx context.Context, rt runtimeapi.RuntimeServiceClient, sandboxID string) error {
	sbs, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{Id: sandboxID}})
	if err != nil {
		return fmt.Errorf("ListPodSandbox: %w", err)
	}
	ctrs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandboxID}})
	if err != nil {
		return fmt.Errorf("ListContainers: %w", err)
	}
	if len(sbs.Items) > 0 || len(ctrs.Containers) > 0 {
		return fmt.Errorf("the runtime still lists the sandbox %s (%d) and %d of its containers after its removal", sandboxID, len(sbs.Items), len(ctrs.Containers))
	}
	return nil
}

// logAll puts every attempt of every container's log into the test's log.
func (p *Pod) logAll() {
	p.mu.Lock()
	type attempt struct {
		name string
		n    uint32
	}
	var all []attempt
	for _, cp := range p.plan.containers {
		c := p.ctrs[cp.name]
		for i := range c.ids {
			all = append(all, attempt{cp.name, uint32(i)})
		}
	}
	p.mu.Unlock()
	for _, a := range all {
		log := p.logFile(a.name, a.n)
		if len(log) > logTail {
			log = "[...]" + log[len(log)-logTail:]
		}
		p.t.Logf("podtest: log of container %s, attempt %d:\n%s", a.name, a.n, log)
	}
}

// processes lists every process of the pod on the node, with what tells
// it from a later process given the same PID: the sandbox's, each
// container's init, everything in their PID namespaces, and the runtime's
// shim of the pod.
func (p *Pod) processes(ctx context.Context) []proc {
	var pids []int
	if id := p.SandboxID(); id != "" {
		if resp, err := p.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true}); err == nil {
			if pid, err := infoPID(resp.Info); err == nil {
				pids = append(pids, pid)
				if shim := parentPID(pid); shim > 1 && isShim(shim) {
					pids = append(pids, shim)
				}
			}
		}
	}
	p.mu.Lock()
	var ids []string
	for _, c := range p.ctrs {
		ids = append(ids, c.ids...)
	}
	p.mu.Unlock()
	for _, id := range ids {
		if pid, err := containerPID(ctx, p.rt, id); err == nil {
			pids = append(pids, pid)
		}
	}
	return podProcesses(pids)
}

// permanent marks an error that ends a poll at once.
type permanent struct{ error }

func (e permanent) Unwrap() error { return e.error }

// poll calls f every pollEvery until it is done, returns a permanent
// error, or ctx ends (the last error then says what was still missing).
func poll(ctx context.Context, f func() (bool, error)) error {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for {
		done, err := f()
		if done {
			return nil
		}
		var perm permanent
		if errors.As(err, &perm) {
			return perm.error
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

func isNotFound(err error) bool { return status.Code(err) == codes.NotFound }
