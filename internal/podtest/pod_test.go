package podtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
)

func TestMain(m *testing.M) { os.Exit(containerdtest.Main(m)) }

// TestPodFromManifest runs the manifest as it is and checks what sidecar
// mode relies on: the executor answers, main runs as the manifest says,
// both share a PID namespace, a restarted executor keeps its data
// directory; and that the pod leaves nothing behind.
func TestPodFromManifest(t *testing.T) {
	env := containerdtest.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()

	var (
		sandboxID, dir string
		procs          []proc
	)
	t.Run("pod", func(t *testing.T) {
		start := time.Now()
		pod := Start(ctx, t, env)
		t.Logf("Start took %s (the image build included, if this test built it)", time.Since(start).Round(time.Millisecond))
		sandboxID, dir = pod.SandboxID(), pod.dir

		getHealth(t, pod)

		// What `kubectl exec main -- id` says: root, as the manifest sets
		// no user and busybox names none.
		res, err := pod.Exec(ctx, MainContainer, "id")
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(res.Stdout)); res.ExitCode != 0 || !strings.HasPrefix(got, "uid=0(root) gid=0(root)") {
			t.Fatalf("id in main: exit %d, %q (stderr %q), want uid=0(root) gid=0(root)", res.ExitCode, got, res.Stderr)
		}
		mainPID, err := pod.PID(ctx, MainContainer)
		if err != nil {
			t.Fatal(err)
		}
		if cmd := cmdline(mainPID); cmd != "sleep infinity" {
			t.Fatalf("main's PID %d runs %q, want the manifest's command", mainPID, cmd)
		}
		if env := environ(t, mainPID); !containsLine(env, "SANDBOX_MAIN_CONTAINER=main") {
			t.Fatalf("main's environment lacks the manifest's SANDBOX_MAIN_CONTAINER=main:\n%s", env)
		}

		// shareProcessNamespace: one PID namespace, in which the executor's
		// container sees main's process.
		execPID, err := pod.PID(ctx, ExecutorContainer)
		if err != nil {
			t.Fatal(err)
		}
		if a, b := pidNS(mainPID), pidNS(execPID); a == "" || a != b || a == pidNS(os.Getpid()) {
			t.Fatalf("PID namespaces: main %q, executor %q, this test %q; want main's and the executor's the same, and the pod's own", a, b, pidNS(os.Getpid()))
		}
		res, err = pod.Exec(ctx, ExecutorContainer, "sh", "-c", `for d in /proc/[0-9]*; do tr '\0' ' ' <"$d/cmdline"; echo; done`)
		if err != nil {
			t.Fatal(err)
		}
		if !containsLine(string(res.Stdout), "sleep infinity") {
			t.Fatalf("the executor's container does not see main's process; its processes:\n%s", res.Stdout)
		}
		// The executor runs as the manifest says: sidecar mode, and its
		// security context.
		if cmd := cmdline(execPID); !strings.Contains(cmd, "--enable-sidecar-mode") || !strings.Contains(cmd, "--listen-addr="+strings.TrimPrefix(pod.URL(), "http://")) {
			t.Fatalf("the executor runs %q", cmd)
		}
		st := procStatus(t, execPID)
		if st["Seccomp"] != "0" {
			t.Errorf("the executor's Seccomp mode is %s, want 0 (the manifest's Unconfined)", st["Seccomp"])
		}
		if caps := capEff(t, st); caps&(1<<21) == 0 || caps&(1<<19) == 0 {
			t.Errorf("the executor's effective capabilities %#x lack SYS_ADMIN or SYS_PTRACE", caps)
		}

		// A restart, as the kubelet does one: a new container, attempt 1, on
		// the same emptyDir.
		marker := filepath.Join(pod.DataDir(), "podtest-marker")
		if err := os.WriteFile(marker, []byte("kept"), 0o644); err != nil {
			t.Fatal(err)
		}
		oldID := pod.ContainerID(ExecutorContainer)
		oldExec := proc{pid: execPID}
		oldExec.start, _ = procStat(execPID)
		if err := pod.RestartContainer(ctx, ExecutorContainer); err != nil {
			t.Fatal(err)
		}
		newID := pod.ContainerID(ExecutorContainer)
		status, err := pod.Status(ctx, ExecutorContainer)
		if err != nil {
			t.Fatal(err)
		}
		if newID == oldID || status.Id != newID || status.Metadata.Attempt != 1 || status.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Fatalf("after RestartContainer: ID %s (was %s), status %s attempt %d", newID, oldID, status.State, status.Metadata.Attempt)
		}
		if oldExec.alive() {
			t.Fatalf("the first executor (pid %d) still runs after the restart", execPID)
		}
		getHealth(t, pod)
		res, err = pod.Exec(ctx, ExecutorContainer, "cat", "/var/lib/sandbox/tasks/podtest-marker")
		if err != nil || string(res.Stdout) != "kept" {
			t.Fatalf("the restarted executor's data directory: %q, %v (stderr %q); want the file written before the restart", res.Stdout, err, res.Stderr)
		}
		if !strings.Contains(pod.Logs(ExecutorContainer), " stderr ") && !strings.Contains(pod.Logs(ExecutorContainer), " stdout ") {
			t.Errorf("the restarted executor's log is empty or not in the CRI format:\n%s", pod.Logs(ExecutorContainer))
		}

		var pids []int
		for _, c := range []string{MainContainer, ExecutorContainer} {
			pid, err := pod.PID(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			pids = append(pids, pid)
		}
		procs = podProcesses(pids)
		if len(procs) < 3 {
			t.Fatalf("only %d processes found in the pod: %v", len(procs), procs)
		}
	})
	if t.Failed() {
		return
	}

	// The subtest's cleanup removed the pod: nothing of it may be left.
	if alive := waitGone(procs, goneTimeout); len(alive) > 0 {
		t.Errorf("processes of the pod still run: %v", alive)
	}
	if m := mountsUnder(dir); len(m) > 0 {
		t.Errorf("still mounted under the pod's directory: %v", m)
	}
	if err := sandboxGone(ctx, dialCRI(t, env), sandboxID); err != nil {
		t.Error(err)
	}
}

// TestOptionsReachTheContainers runs the pod with every option and checks
// the kernel's view of the containers: what the options ask for is what
// the containers get.
func TestOptionsReachTheContainers(t *testing.T) {
	env := containerdtest.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	const limit = 64 << 20
	pod := Start(ctx, t, env,
		WithExecutorArgs("--log-level=debug"),
		WithExecutorEnv("PODTEST_MARK", "on"),
		WithMainCommand("sh", "-c", "exec sleep 1000000"),
		WithMainMemoryLimit(limit),
		WithMainSecurityContext(&corev1.SecurityContext{
			RunAsUser:                ptrTo[int64](1000),
			RunAsGroup:               ptrTo[int64](1000),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			AllowPrivilegeEscalation: ptrTo(false),
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		}),
	)

	execPID, err := pod.PID(ctx, ExecutorContainer)
	if err != nil {
		t.Fatal(err)
	}
	if cmd := cmdline(execPID); !strings.HasSuffix(cmd, " --log-level=debug") {
		t.Errorf("the executor runs %q, want the extra argument last", cmd)
	}
	if e := environ(t, execPID); !containsLine(e, "PODTEST_MARK=on") {
		t.Errorf("the executor's environment lacks PODTEST_MARK=on:\n%s", e)
	}

	mainPID, err := pod.PID(ctx, MainContainer)
	if err != nil {
		t.Fatal(err)
	}
	if cmd := cmdline(mainPID); cmd != "sleep 1000000" {
		t.Errorf("main runs %q, want the command given", cmd)
	}
	st := procStatus(t, mainPID)
	for k, want := range map[string]string{
		"Uid": "1000\t1000\t1000\t1000", "Gid": "1000\t1000\t1000\t1000",
		"NoNewPrivs": "1", "Seccomp": "2",
	} {
		if st[k] != want {
			t.Errorf("main's %s: %q, want %q", k, st[k], want)
		}
	}
	if caps := capEff(t, st); caps != 0 {
		t.Errorf("main's effective capabilities: %#x, want none", caps)
	}
	res, err := pod.Exec(ctx, MainContainer, "id", "-u")
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "1000" {
		t.Errorf("id -u in main: %q, %v; want 1000", res.Stdout, err)
	}
	if got, err := memoryLimit(mainPID); err != nil || got != limit {
		t.Errorf("main's memory limit: %d, %v; want %d", got, err, limit)
	}

	if err := pod.UpdateMemory(ctx, MainContainer, 96<<20); err != nil {
		t.Fatal(err)
	}
	if got, err := memoryLimit(mainPID); err != nil || got != 96<<20 {
		t.Errorf("main's memory limit after UpdateMemory: %d, %v; want %d", got, err, 96<<20)
	}

	// A restart of main takes the manifest's (and the options') settings
	// again, not the update's.
	if err := pod.StopContainer(ctx, MainContainer, 0); err != nil {
		t.Fatal(err)
	}
	if err := pod.RestartContainer(ctx, MainContainer); err != nil {
		t.Fatal(err)
	}
	status, err := pod.Status(ctx, MainContainer)
	if err != nil {
		t.Fatal(err)
	}
	if status.Metadata.Attempt != 1 {
		t.Errorf("main's attempt after a restart: %d, want 1", status.Metadata.Attempt)
	}
	newPID, err := pod.PID(ctx, MainContainer)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := memoryLimit(newPID); err != nil || got != limit {
		t.Errorf("the restarted main's memory limit: %d, %v; want %d", got, err, limit)
	}
	getHealth(t, pod)
}

// TestFailedStartLeavesNothing: a pod that cannot start fails the test
// with the reason and the containers' logs, and is removed all the same.
func TestFailedStartLeavesNothing(t *testing.T) {
	env := containerdtest.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	rt := dialCRI(t, env)

	r := &recordingTB{TB: t}
	// Also when a check below fails the test early.
	defer r.runCleanups()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(ctx, r, env, WithMainCommand("sh", "-c", "echo bye from main; exit 3"))
		r.Errorf("Start returned with a main container that exits")
	}()
	<-done
	if len(r.fatals) != 1 || !strings.Contains(r.fatals[0], "main exited with 3") || !strings.Contains(r.fatals[0], "bye from main") {
		t.Fatalf("Start failed with %q; want main's exit code and log", r.fatals)
	}

	// The package's tests run one at a time: the one pod of the manifest is
	// the failed one.
	sbs, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.name": "sandbox"},
	}})
	if err != nil || len(sbs.Items) != 1 {
		t.Fatalf("ListPodSandbox: %v, %v; want the failed pod", sbs, err)
	}
	id := sbs.Items[0].Id
	status, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	pause, err := infoPID(status.Info)
	if err != nil {
		t.Fatal(err)
	}
	procs := podProcesses([]int{pause})

	r.runCleanups()
	if len(r.errors) > 0 {
		t.Errorf("the teardown failed: %q", r.errors)
	}
	if !strings.Contains(r.logs.String(), "log of container main, attempt 0") {
		t.Errorf("the failed test's log lacks main's log:\n%s", r.logs.String())
	}
	if err := sandboxGone(ctx, rt, id); err != nil {
		t.Error(err)
	}
	if alive := waitGone(procs, goneTimeout); len(alive) > 0 {
		t.Errorf("processes of the failed pod still run: %v", alive)
	}
}

// recordingTB stands for a test whose failures are to be looked at rather
// than failing: Fatalf ends the goroutine as testing's does, and cleanups
// run when the caller says.
type recordingTB struct {
	testing.TB
	mu       sync.Mutex
	fatals   []string
	errors   []string
	logs     strings.Builder
	cleanups []func()
}

func (r *recordingTB) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.fatals = append(r.fatals, fmt.Sprintf(format, args...))
	r.mu.Unlock()
	runtime.Goexit()
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recordingTB) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(&r.logs, format+"\n", args...)
}

func (r *recordingTB) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.fatals)+len(r.errors) > 0
}

func (r *recordingTB) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recordingTB) runCleanups() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

func getHealth(t *testing.T, pod *Pod) {
	t.Helper()
	resp, err := http.Get(pod.URL() + "/health")
	if err != nil {
		t.Fatalf("GET /health: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /health: %s %s", resp.Status, body)
	}
}

func dialCRI(t *testing.T, env *containerdtest.Env) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

func environ(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\x00", "\n")
}

// procStatus is /proc/<pid>/status as a map.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func capEff(t *testing.T, status map[string]string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(status["CapEff"], 16, 64)
	if err != nil {
		t.Fatalf("CapEff %q: %v", status["CapEff"], err)
	}
	return v
}

func containsLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

func ptrTo[T any](v T) *T { return &v }
