package cri_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/internal/testbin"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
)

// executor is task-executor, built once for the package, which serves the
// runtime as a built-in plugin.
var executor string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cri-plugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot create a temporary directory:", err)
		os.Exit(1)
	}
	executor = filepath.Join(dir, "task-executor")
	if err := testbin.Executor(context.Background(), executor, testbin.Options{Race: true}); err != nil {
		fmt.Fprintln(os.Stderr, "cannot build task-executor:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := containerdtest.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// criHarness runs the conformance kit against the cri plugin and a real
// containerd, with tasks in the busybox test image.
type criHarness struct{ env *containerdtest.Env }

func (h criHarness) Launch(t *testing.T) runtimetest.Instance {
	return runtimetest.LaunchCommand(t, []string{executor, "plugin", "cri"}, nil)
}

func (h criHarness) Spec(script string, opts runtimetest.SpecOptions) sdk.TaskSpec {
	spec := sdk.TaskSpec{Container: &corev1.Container{
		Name:            "task",
		Image:           h.env.BusyboxImage,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{"sh", "-c", script},
		Env:             opts.Env,
		WorkingDir:      opts.WorkingDir,
	}}
	if opts.TimeoutSeconds > 0 {
		timeout := opts.TimeoutSeconds
		spec.TimeoutSeconds = &timeout
	}
	return spec
}

// StartErrorSpec names an entrypoint the image does not have.
func (h criHarness) StartErrorSpec() sdk.TaskSpec {
	return sdk.TaskSpec{Container: &corev1.Container{
		Name: "task", Image: h.env.BusyboxImage, ImagePullPolicy: corev1.PullIfNotPresent,
		Command: []string{"/" + runtimetest.MissingCommandName},
	}}
}

// Output reads the container's log from the task's directory, in CRI's
// log format, back into plain text.
func (h criHarness) Output(t *testing.T, task sdk.Task) string {
	t.Helper()
	return criLogText(t, task, "container.log")
}

// criLogText is the text of a task's CRI log file name ("" if there is
// none).
func criLogText(t *testing.T, task sdk.Task, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join(task.Dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatalf("cannot read the log of task %s: %v", task.Name, err)
	}
	defer f.Close()
	var out strings.Builder
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// <time> <stream> <P|F> <text>
		parts := strings.SplitN(sc.Text(), " ", 4)
		if len(parts) < 3 {
			t.Fatalf("task %s: malformed CRI log line %q", task.Name, sc.Text())
		}
		if len(parts) == 4 {
			out.WriteString(parts[3])
		}
		if parts[2] == "F" {
			out.WriteByte('\n')
		}
	}
	return out.String()
}

func (h criHarness) Settings() map[string]string {
	return map[string]string{sdk.SettingGracePeriod: "5s", sdk.SettingCRISocket: h.env.Socket}
}

// DefaultDir: a container that names no working directory runs in its
// image's, which the test image leaves at /.
func (criHarness) DefaultDir(sdk.Task) string { return "/" }

// InvalidSpecs are refused by the runtime's Validate, past the host's own
// checks: the create's 400.
func (h criHarness) InvalidSpecs() map[string]sdk.TaskSpec {
	withVolume := func(v corev1.Volume) sdk.TaskSpec {
		spec := h.Spec("true", runtimetest.SpecOptions{})
		spec.Container.VolumeMounts = []corev1.VolumeMount{{Name: v.Name, MountPath: "/mnt"}}
		spec.Volumes = []corev1.Volume{v}
		return spec
	}
	return map[string]sdk.TaskSpec{
		"a hostPath no --allowed-host-path allows": withVolume(corev1.Volume{Name: "host",
			VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/etc"}}}),
		"an emptyDir in memory": withVolume(corev1.Volume{Name: "mem",
			VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}),
	}
}

// StopSlack: a Stop goes through containerd, which under the load of
// make test (the kit's 30 concurrent containers beside the stop tests,
// other packages' tests) was seen to take 2.5 s for a task that exits on
// SIGTERM at once.
func (h criHarness) StopSlack() time.Duration { return 3 * time.Second }

func TestConformance(t *testing.T) {
	env := containerdtest.Require(t)
	runtimetest.Run(t, criHarness{env: env})
	t.Cleanup(func() { checkNoLeftovers(t, env) })
}

// TestConformanceEvented runs the kit on a containerd with CRI container
// events (2.x, built from the Go module proxy), where exits are pushed to
// the plugin rather than found by listing.
func TestConformanceEvented(t *testing.T) {
	env := containerdtest.RequireEvented(t)
	runtimetest.Run(t, criHarness{env: env})
	t.Cleanup(func() { checkNoLeftovers(t, env) })
}

// criClient connects to the test containerd, as an operator's crictl would.
func criClient(t *testing.T, env *containerdtest.Env) cri.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("cannot connect to containerd: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return cri.NewRuntimeServiceClient(conn)
}

// checkNoLeftovers fails t if the plugin left any sandbox or container in
// containerd once every task has been removed. Removal of a finished
// task's sandbox is asynchronous, hence the deadline.
func checkNoLeftovers(t *testing.T, env *containerdtest.Env) {
	t.Helper()
	rt := criClient(t, env)
	var boxes []*cri.PodSandbox
	var ctrs []*cri.Container
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sb, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
		if err != nil {
			cancel()
			t.Fatalf("ListPodSandbox: %v", err)
		}
		cs, err := rt.ListContainers(ctx, &cri.ListContainersRequest{})
		cancel()
		if err != nil {
			t.Fatalf("ListContainers: %v", err)
		}
		boxes, ctrs = sb.Items, cs.Containers
		if len(boxes) == 0 && len(ctrs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, b := range boxes {
		t.Errorf("sandbox left in containerd: %s %s (labels %v)", b.Id, b.Metadata.GetName(), b.Labels)
	}
	for _, c := range ctrs {
		t.Errorf("container left in containerd: %s %s (state %s)", c.Id, c.Metadata.GetName(), c.State)
	}
}

// launch starts the plugin with a fresh data directory and initialises it.
func launch(t *testing.T, env *containerdtest.Env, settings map[string]string) sdk.Runtime {
	t.Helper()
	return launchIn(t, env, t.TempDir(), settings).Runtime()
}

// launchIn starts the plugin on dataDir and initialises it.
func launchIn(t *testing.T, env *containerdtest.Env, dataDir string, settings map[string]string) runtimetest.Instance {
	t.Helper()
	inst := runtimetest.LaunchCommand(t, []string{executor, "plugin", "cri"}, nil)
	rt := inst.Runtime()
	all := map[string]string{sdk.SettingGracePeriod: "2s", sdk.SettingCRISocket: env.Socket}
	for k, v := range settings {
		all[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := rt.Init(ctx, sdk.Config{DataDir: dataDir, Settings: all}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return inst
}

// newTask makes a task directory and a task for spec.
func newTask(t *testing.T, name string, spec sdk.TaskSpec) sdk.Task {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return sdk.Task{Name: name, Spec: spec, Dir: dir}
}

func busybox(env *containerdtest.Env, command ...string) *corev1.Container {
	return &corev1.Container{Name: "task", Image: env.BusyboxImage, ImagePullPolicy: corev1.PullIfNotPresent, Command: command}
}

// run starts the task and waits for its end; the task is removed when t
// ends.
func run(t *testing.T, rt sdk.Runtime, task sdk.Task) *corev1.ContainerStateTerminated {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	t.Cleanup(func() { remove(t, rt, task.Name) })
	if _, err := rt.Start(ctx, task); err != nil {
		t.Fatalf("Start(%s): %v", task.Name, err)
	}
	var st sdk.TaskStatus
	for ctx.Err() == nil {
		var err error
		if st, err = rt.Status(ctx, task.Name); err != nil {
			t.Fatalf("Status(%s): %v", task.Name, err)
		}
		if st.IsTerminal() {
			return st.State.Terminated
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("task %s did not terminate; last status %+v", task.Name, st.State)
	return nil
}

func remove(t *testing.T, rt sdk.Runtime, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := rt.Remove(ctx, name); err != nil {
		t.Errorf("Remove(%s): %v", name, err)
	}
}

// waitState polls the task's status until ok accepts it.
func waitState(t *testing.T, rt sdk.Runtime, name string, what string, ok func(corev1.ContainerState) bool) corev1.ContainerState {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := rt.Status(ctx, name)
		cancel()
		if err != nil {
			t.Fatalf("Status(%s): %v", name, err)
		}
		if ok(st.State) {
			return st.State
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s never became %s; last state %+v", name, what, st.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCommandAndArgs(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, nil)
	tests := []struct {
		name          string
		command, args []string
		wantCode      int32
		wantOut       string
	}{
		{"command-only", []string{"sh", "-c", "echo one; exit 4"}, nil, 4, "one\n"},
		{"command-and-args", []string{"echo"}, []string{"a", "b c"}, 0, "a b c\n"},
		// No command: the image's entrypoint (none) with args as its cmd.
		{"args-only", nil, []string{"echo", "from-args"}, 0, "from-args\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := busybox(env, tc.command...)
			c.Args = tc.args
			task := newTask(t, "args-"+tc.name, sdk.TaskSpec{Container: c})
			term := run(t, rt, task)
			if term.ExitCode != tc.wantCode {
				t.Errorf("exit code %d, want %d (%+v)", term.ExitCode, tc.wantCode, term)
			}
			if out := (criHarness{env}).Output(t, task); out != tc.wantOut {
				t.Errorf("output %q, want %q", out, tc.wantOut)
			}
		})
	}
}

func TestVolumes(t *testing.T) {
	env := containerdtest.Require(t)
	offered := t.TempDir()
	if err := os.WriteFile(filepath.Join(offered, "input"), []byte("from-the-operator"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostDir := t.TempDir()
	rt := launch(t, env, map[string]string{
		sdk.SettingVolumes:          fmt.Sprintf(`{"data-volume":%q}`, offered),
		sdk.SettingAllowedHostPaths: fmt.Sprintf(`[%q]`, filepath.Dir(hostDir)),
	})
	if err := os.WriteFile(filepath.Join(hostDir, "input"), []byte("from-the-host"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := busybox(env, "sh", "-c", `set -e
cat /host/input; echo
cat /data/input; echo
echo written > /host/output
echo scratch > /scratch/file
echo sub > /sub/file
if (echo no > /ro/denied) 2>/dev/null; then exit 9; fi`)
	c.VolumeMounts = []corev1.VolumeMount{
		{Name: "host", MountPath: "/host"},
		{Name: "data-volume", MountPath: "/data"},
		{Name: "scratch", MountPath: "/scratch"},
		{Name: "scratch", MountPath: "/sub", SubPath: "nested/dir"},
		{Name: "host", MountPath: "/ro", ReadOnly: true},
	}
	task := newTask(t, "volumes", sdk.TaskSpec{Container: c, Volumes: []corev1.Volume{
		{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostDir}}},
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}})
	term := run(t, rt, task)
	out := (criHarness{env}).Output(t, task)
	if term.ExitCode != 0 {
		t.Fatalf("task failed: %+v\noutput: %s", term, out)
	}
	if out != "from-the-host\nfrom-the-operator\n" {
		t.Errorf("output %q", out)
	}
	for path, want := range map[string]string{
		filepath.Join(hostDir, "output"):                                 "written\n",
		filepath.Join(task.Dir, "volumes", "scratch", "file"):            "scratch\n",
		filepath.Join(task.Dir, "volumes", "scratch", "nested/dir/file"): "sub\n",
	} {
		if b, err := os.ReadFile(path); err != nil || string(b) != want {
			t.Errorf("%s holds %q (%v), want %q", path, b, err, want)
		}
	}
}

func TestValidate(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, map[string]string{sdk.SettingVolumes: `{"data-volume":"/tmp"}`, sdk.SettingAllowedHostPaths: `["/srv/tasks"]`})
	nfs := corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "x", Path: "/"}}
	hostPath := func(p string) []corev1.Volume {
		return []corev1.Volume{{Name: "h", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: p}}}}
	}
	yes, no, root, uid := true, false, int64(0), int64(1000)
	tests := []struct {
		name    string
		mounts  []corev1.VolumeMount
		volumes []corev1.Volume
		sc      *corev1.SecurityContext
		wantErr string
	}{
		{"hostpath-allowed", nil, hostPath("/srv/tasks/a"), nil, ""},
		{"hostpath-the-prefix-itself", nil, hostPath("/srv/tasks"), nil, ""},
		{"hostpath-root", nil, hostPath("/"), nil, "not below a directory the executor allows"},
		{"hostpath-sibling-prefix", nil, hostPath("/srv/tasks-other"), nil, "not below a directory the executor allows"},
		{"hostpath-dotdot", nil, hostPath("/srv/tasks/../etc"), nil, "not below a directory the executor allows"},
		{"securitycontext-mapped", nil, nil, &corev1.SecurityContext{RunAsUser: &uid, RunAsNonRoot: &yes, AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem: &yes, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_BIND_SERVICE"}},
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}, ""},
		{"windows-options", nil, nil, &corev1.SecurityContext{WindowsOptions: &corev1.WindowsSecurityContextOptions{}}, "securityContext.windowsOptions"},
		{"proc-mount-unmasked", nil, nil, &corev1.SecurityContext{ProcMount: ptrTo(corev1.UnmaskedProcMount)}, "securityContext.procMount"},
		{"seccomp-localhost", nil, nil, &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptrTo("p.json")}}, "securityContext.seccompProfile.type"},
		{"nonroot-as-root", nil, nil, &corev1.SecurityContext{RunAsUser: &root, RunAsNonRoot: &yes}, "securityContext.runAsNonRoot"},
		{"group-without-user", nil, nil, &corev1.SecurityContext{RunAsGroup: &uid}, "securityContext.runAsGroup"},
		{"privileged-no-escalation", nil, nil, &corev1.SecurityContext{Privileged: &yes, AllowPrivilegeEscalation: &no}, "securityContext.allowPrivilegeEscalation"},
		{"bad-capability", nil, nil, &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"net admin"}}}, "securityContext.capabilities.add"},
		{"unknown-volume", []corev1.VolumeMount{{Name: "nope", MountPath: "/x"}}, nil, nil, `volumeMount "nope" names no volume`},
		{"unsupported-type", []corev1.VolumeMount{{Name: "n", MountPath: "/x"}}, []corev1.Volume{{Name: "n", VolumeSource: nfs}}, nil, "only hostPath and emptyDir"},
		{"memory-emptydir", nil, []corev1.Volume{{Name: "m", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}}}, nil, "emptyDir.medium"},
		{"operator-volume", []corev1.VolumeMount{{Name: "data-volume", MountPath: "/x"}}, nil, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := busybox(env, "true")
			c.VolumeMounts = tc.mounts
			c.SecurityContext = tc.sc
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := rt.Validate(ctx, sdk.TaskSpec{Container: c, Volumes: tc.volumes})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.wantErr != "" && (!errors.Is(err, sdk.ErrInvalidSpec) || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Validate: %v, want an invalid-spec error with %q", err, tc.wantErr)
			}
		})
	}
}

// TestImagePull: a missing image is a waiting state, never an error, and
// no sandbox is made for it.
func TestImagePull(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, nil)
	tests := []struct {
		name, image string
		policy      corev1.PullPolicy
		wantReason  string
	}{
		{"never-missing", "localhost/no-such-image:v1", corev1.PullNever, "ErrImageNeverPull"},
		{"pull-fails", "localhost/no-such-image:v1", corev1.PullIfNotPresent, "ErrImagePull"},
		// Kubernetes' default for :latest is Always; no registry answers.
		{"latest-defaults-to-always", env.BusyboxImage, "", "ErrImagePull"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			task := newTask(t, "image-"+tc.name, sdk.TaskSpec{Container: &corev1.Container{
				Name: "task", Image: tc.image, ImagePullPolicy: tc.policy, Command: []string{"true"},
			}})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			st, err := rt.Start(ctx, task)
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if w := st.State.Waiting; w == nil || w.Reason != tc.wantReason || w.Message == "" {
				t.Fatalf("Start returned %+v, want waiting %s with a message", st.State, tc.wantReason)
			}
			if tc.wantReason == "ErrImagePull" {
				// Then it backs off before the next attempt, as the kubelet does.
				waitState(t, rt, task.Name, "waiting ImagePullBackOff", func(s corev1.ContainerState) bool {
					return s.Waiting != nil && s.Waiting.Reason == "ImagePullBackOff"
				})
			}
			// Stopping a task that waits for its image ends it at once.
			if err := rt.Stop(ctx, task.Name, 10*time.Second); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			st, err = rt.Status(ctx, task.Name)
			if err != nil || !st.IsTerminal() || !strings.Contains(st.State.Terminated.Message, "image") {
				t.Errorf("after Stop: %+v, %v; want terminated, the message naming the image problem", st.State, err)
			}
			remove(t, rt, task.Name)
			// Remove returns once nothing more is written into the task's
			// directory, which the host then deletes: the exit record the
			// stop wrote in the background is there.
			if _, err := os.Stat(filepath.Join(task.Dir, "cri-exit.json")); err != nil {
				t.Errorf("after Remove: %v", err)
			}
		})
	}
	t.Cleanup(func() { checkNoLeftovers(t, env) })
}

// TestOOMKilled: a container in which the kernel killed a process over its
// memory limit terminates with Kubernetes' reason OOMKilled, as the CRI
// status says: also when the process killed was a child and the container
// then exited with a code of its own, which containerd's exit event alone
// would not tell.
func TestOOMKilled(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, nil)
	// Each allocates after a moment: containerd watches the container's
	// memory cgroup for OOM kills only once it has started it, and an OOM
	// kill before that is lost to it (CRI reason Error; 1 in 10 runs with
	// three CPU hogs beside the test, containerd 1.6): what the kubelet
	// would show too, and what the README says.
	tests := []struct {
		name, script string
		wantCode     int32
	}{
		{"main-process", "sleep 0.5; exec dd if=/dev/zero of=/dev/null bs=64M count=4", 137},
		{"child", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=64M count=4; exit 3", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := busybox(env, "sh", "-c", tc.script)
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resourceMustParse(t, "16Mi")}
			term := run(t, rt, newTask(t, "oom-"+tc.name, sdk.TaskSpec{Container: c}))
			if term.Reason != "OOMKilled" || term.ExitCode != tc.wantCode {
				t.Errorf("terminated %+v, want reason OOMKilled and exit code %d", term, tc.wantCode)
			}
		})
	}
}

// TestOutputCompleteAtExit: the moment a task is reported terminated, its
// log holds all the output the runtime will ever write for it: nothing is
// added once its container is removed. containerd's exit event comes before
// its CRI logger has written everything: a task that ends with its pipes
// full of short lines leaves the logger tens of milliseconds of writes
// behind. The output is there whole, its last line without a newline
// included, except where containerd 1.6 drops it: what its pipes still
// hold when it deletes the task (up to 128 KiB), the same output the
// kubelet would show.
func TestOutputCompleteAtExit(t *testing.T) {
	const lines = 128 << 10
	cases := []struct {
		name, script string
		// cutOn16: containerd 1.6 writes only a part of the output.
		cutOn16 bool
		want    string
	}{
		{"one-long-line", fmt.Sprintf(`head -c %d /dev/zero | tr '\0' a; echo; printf end`, lines), false, strings.Repeat("a", lines) + "\nend"},
		{"short-lines", fmt.Sprintf(`yes a | head -n %d; printf end`, lines), true, strings.Repeat("a\n", lines) + "end"},
	}
	for _, rt := range []struct {
		name string
		env  func(testing.TB) *containerdtest.Env
		is16 bool
	}{{"containerd1.6", containerdtest.Require, true}, {"containerd2", containerdtest.RequireEvented, false}} {
		t.Run(rt.name, func(t *testing.T) {
			env := rt.env(t)
			r := launch(t, env, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			events, err := r.Events(ctx)
			if err != nil {
				t.Fatalf("Events: %v", err)
			}
			for _, tc := range cases {
				for i := range 3 {
					task := newTask(t, fmt.Sprintf("complete-%s-%d", tc.name, i), sdk.TaskSpec{Container: busybox(env, "sh", "-c", tc.script)})
					st, err := r.Start(ctx, task)
					if err != nil {
						t.Fatalf("Start(%s): %v", task.Name, err)
					}
					for !st.IsTerminal() {
						select {
						case st = <-events:
							if st.Name != task.Name {
								st = sdk.TaskStatus{}
							}
						case <-ctx.Done():
							t.Fatalf("task %s did not terminate", task.Name)
						}
					}
					atExit := criLogText(t, task, "container.log")
					remove(t, r, task.Name)
					final := criLogText(t, task, "container.log")
					if atExit != final {
						t.Errorf("task %s: %d bytes of output when reported %+v, %d once removed", task.Name, len(atExit), st.State.Terminated, len(final))
					}
					whole := !(rt.is16 && tc.cutOn16)
					if !strings.HasPrefix(tc.want, final) || whole && final != tc.want {
						t.Errorf("task %s: output of %d bytes (ending %q), want %d (ending %q)",
							task.Name, len(final), final[max(0, len(final)-8):], len(tc.want), tc.want[len(tc.want)-8:])
					}
					if term := st.State.Terminated; term.ExitCode != 0 || term.FinishedAt.Before(&term.StartedAt) {
						t.Errorf("task %s: terminated %+v, want exit code 0 and a finish after the start", task.Name, term)
					}
				}
			}
		})
	}
}

// TestRemoveRunning: removing a running task kills its container and
// leaves nothing in containerd.
func TestRemoveRunning(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, nil)
	task := newTask(t, "remove-running", sdk.TaskSpec{Container: busybox(env, "sleep", "300")})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := rt.Start(ctx, task)
	if err != nil || st.State.Running == nil {
		t.Fatalf("Start: %+v, %v; want running", st.State, err)
	}
	began := time.Now()
	if err := rt.Remove(ctx, task.Name); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if took := time.Since(began); took > 20*time.Second {
		t.Errorf("Remove took %s", took)
	}
	if _, err := rt.Status(ctx, task.Name); !errors.Is(err, sdk.ErrNotFound) {
		t.Errorf("Status after Remove: %v, want ErrNotFound", err)
	}
	checkNoLeftovers(t, env)
}

// TestStoppedFromOutside: a container the executor did not stop says so:
// killed with its sandbox (as a kubelet kills sandboxes it does not know),
// or stopped by another client of the runtime.
func TestStoppedFromOutside(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, nil)
	c := criClient(t, env)
	cases := []struct {
		name, wantReason, wantMsg string
		stop                      func(ctx context.Context, ctr *cri.Container) error
	}{
		{"sandbox", "PodSandboxStopped", "stopped the task's pod sandbox", func(ctx context.Context, ctr *cri.Container) error {
			_, err := c.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: ctr.PodSandboxId})
			return err
		}},
		{"container", sdk.ReasonFailed, "not stopped by the executor", func(ctx context.Context, ctr *cri.Container) error {
			_, err := c.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: ctr.Id})
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			task := newTask(t, "outside-"+tc.name, sdk.TaskSpec{Container: busybox(env, "sleep", "300")})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			t.Cleanup(func() { remove(t, rt, task.Name) })
			if st, err := rt.Start(ctx, task); err != nil || st.State.Running == nil {
				t.Fatalf("Start: %+v, %v; want running", st.State, err)
			}
			resp, err := c.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
				LabelSelector: map[string]string{"task-executor.opensandbox.io/task": task.Name}}})
			if err != nil || len(resp.Containers) != 1 {
				t.Fatalf("the task's container: %v, %v", resp, err)
			}
			if err := tc.stop(ctx, resp.Containers[0]); err != nil {
				t.Fatal(err)
			}
			term := waitState(t, rt, task.Name, "terminated", func(s corev1.ContainerState) bool { return s.Terminated != nil }).Terminated
			if term.Reason != tc.wantReason || term.ExitCode != 137 || !strings.Contains(term.Message, tc.wantMsg) {
				t.Fatalf("terminated %+v, want %s 137 saying %q", term, tc.wantReason, tc.wantMsg)
			}
		})
	}
}

func resourceMustParse(t *testing.T, s string) resource.Quantity {
	t.Helper()
	q, err := resource.ParseQuantity(s)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestLogCap: with an output cap, container.log is rotated to
// container.log.1 and reopened through CRI, so a chatty container's log
// stays within about the cap on disk while it runs on normally.
func TestLogCap(t *testing.T) {
	env := containerdtest.Require(t)
	rt := launch(t, env, map[string]string{sdk.SettingMaxLogBytes: "1048576"})
	// About 4 MB at 1 MB/s, then a last line.
	c := busybox(env, "sh", "-c", `i=0; while [ $i -lt 40 ]; do head -c 100000 /dev/zero | tr '\0' x; echo; i=$((i+1)); sleep 0.1; done; echo done`)
	task := newTask(t, "log-cap", sdk.TaskSpec{Container: c})
	term := run(t, rt, task)
	if term.ExitCode != 0 {
		t.Fatalf("task ended %+v", term)
	}
	var total int64
	for _, name := range []string{"container.log", "container.log.1"} {
		fi, err := os.Stat(filepath.Join(task.Dir, name))
		if name == "container.log" && errors.Is(err, os.ErrNotExist) {
			// Rotated just before the container ended: containerd wrote on
			// into the renamed file, and a container that has exited gets
			// no reopen.
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v (a 4 MB output under a 1 MiB cap must have been rotated)", name, err)
		}
		total += fi.Size()
	}
	if total > 2<<20 {
		t.Errorf("container.log and container.log.1 hold %d bytes; want about the 1 MiB cap", total)
	}
	// The output's end is in container.log, or in container.log.1 when the
	// last rotation came as the container ended.
	if out := criLogText(t, task, "container.log.1") + criLogText(t, task, "container.log"); !strings.HasSuffix(out, "done\n") {
		t.Errorf("container.log.1 and container.log do not end with the last line: ...%q", out[max(0, len(out)-50):])
	}
}

// TestJanitor: a task deleted while the plugin was down (its directory is
// gone) leaves a sandbox behind; the next plugin process on the same data
// directory finds it by its labels and removes it, and leaves alone the
// sandbox of a task that still exists.
func TestJanitor(t *testing.T) {
	env := containerdtest.Require(t)
	dataDir := t.TempDir()
	a := launchIn(t, env, dataDir, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var tasks []sdk.Task
	for _, name := range []string{"janitor-gone", "janitor-kept"} {
		task := sdk.Task{Name: name, Spec: sdk.TaskSpec{Container: busybox(env, "sleep", "300")}, Dir: filepath.Join(dataDir, name)}
		if err := os.Mkdir(task.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if st, err := a.Runtime().Start(ctx, task); err != nil || st.State.Running == nil {
			t.Fatalf("Start(%s): %+v, %v", name, st.State, err)
		}
		tasks = append(tasks, task)
	}
	a.Kill()
	if err := os.RemoveAll(tasks[0].Dir); err != nil {
		t.Fatal(err)
	}

	b := launchIn(t, env, dataDir, nil).Runtime()
	rt := criClient(t, env)
	sandboxesOf := func(task string) int {
		resp, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{
			LabelSelector: map[string]string{"task-executor.opensandbox.io/task": task},
		}})
		if err != nil {
			t.Fatalf("ListPodSandbox: %v", err)
		}
		return len(resp.Items)
	}
	deadline := time.Now().Add(30 * time.Second)
	for sandboxesOf("janitor-gone") > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the sandbox of the task deleted while the plugin was down is still there")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := sandboxesOf("janitor-kept"); n != 1 {
		t.Fatalf("the sandbox of a task that still exists: %d sandboxes, want 1", n)
	}
	sts, err := b.Recover(ctx, tasks[1:])
	if err != nil || len(sts) != 1 || sts[0].State.Running == nil {
		t.Fatalf("Recover of the kept task: %+v, %v; want it running", sts, err)
	}
	remove(t, b, "janitor-kept")
	checkNoLeftovers(t, env)
}

func ptrTo[T any](v T) *T { return &v }
