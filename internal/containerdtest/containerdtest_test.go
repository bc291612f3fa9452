package containerdtest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func dial(t *testing.T, env *Env) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dialing %s: %v", env.Socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// sandboxConfig is what a pod needs on these machines: the node's network
// (there is no CNI) and a log directory for its containers.
func sandboxConfig(name, logDir string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{
			Name:      name,
			Uid:       fmt.Sprintf("%s-%d", name, time.Now().UnixNano()),
			Namespace: "containerdtest",
		},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
}

// poll calls f until it returns true, failing the test at the deadline.
func poll(t *testing.T, ctx context.Context, what string, f func() (bool, error)) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		ok, err := f()
		if ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)", what, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

var criLogLine = regexp.MustCompile(`^(\S+) (stdout|stderr) ([FP]) (.*)$`)

func TestContainerRunsThroughCRI(t *testing.T) {
	env := Require(t)
	rt := dial(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	logDir := t.TempDir()
	sbCfg := sandboxConfig("hello", logDir)
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	podID := sb.PodSandboxId
	removed := false
	t.Cleanup(func() {
		if !removed {
			// The environment is shared by the package's tests: leave no pod.
			_, _ = rt.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID})
			_, _ = rt.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID})
		}
	})

	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: podID,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
			Image:    &runtimeapi.ImageSpec{Image: env.BusyboxImage},
			Command:  []string{"sh", "-c", `echo hello; echo err >&2; echo "greeting=$GREETING"; exit 3`},
			Envs:     []*runtimeapi.KeyValue{{Key: "GREETING", Value: []byte("hi from env")}},
			LogPath:  "hello.log",
		},
		SandboxConfig: sbCfg,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	ctrID := created.ContainerId
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ctrID}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}

	var status *runtimeapi.ContainerStatus
	poll(t, ctx, "the container to exit", func() (bool, error) {
		st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctrID})
		if err != nil {
			return false, err
		}
		status = st.Status
		return status.State == runtimeapi.ContainerState_CONTAINER_EXITED, nil
	})
	if status.ExitCode != 3 {
		t.Errorf("exit code = %d, want 3 (reason %q, message %q)", status.ExitCode, status.Reason, status.Message)
	}
	logPath := filepath.Join(logDir, "hello.log")
	if status.LogPath != logPath {
		t.Errorf("ContainerStatus.LogPath = %q, want %q", status.LogPath, logPath)
	}

	want := []string{"stdout F hello", "stderr F err", "stdout F greeting=hi from env"}
	var got []string
	// The log is written by containerd's I/O copiers, which may finish a
	// moment after the exit is reported.
	poll(t, ctx, "the container's log", func() (bool, error) {
		lines, err := readCRILog(logPath)
		got = lines
		return err == nil && len(lines) >= len(want), err
	})
	t.Logf("%s (timestamps stripped):\n%s", logPath, strings.Join(got, "\n"))
	for _, w := range want {
		if !contains(got, w) {
			t.Errorf("log %s lacks %q; it holds:\n%s", logPath, w, strings.Join(got, "\n"))
		}
	}
	if i, j := index(got, want[0]), index(got, want[2]); i > j {
		t.Errorf("stdout lines out of order in %s:\n%s", logPath, strings.Join(got, "\n"))
	}

	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: podID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	removed = true
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	if len(pods.Items) != 0 {
		t.Errorf("ListPodSandbox after removal = %v, want none", pods.Items)
	}
	ctrs, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatalf("ListContainers: %v", err)
	}
	if len(ctrs.Containers) != 0 {
		t.Errorf("ListContainers after removal = %v, want none", ctrs.Containers)
	}
}

// readCRILog returns the log's lines as "<stream> <tag> <text>", checking
// each starts with an RFC 3339 timestamp.
func readCRILog(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := criLogLine.FindStringSubmatch(sc.Text())
		if m == nil {
			return nil, fmt.Errorf("line %q is not in the CRI log format", sc.Text())
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			return nil, fmt.Errorf("line %q: timestamp: %w", sc.Text(), err)
		}
		lines = append(lines, m[2]+" "+m[3]+" "+m[4])
	}
	return lines, sc.Err()
}

func index(lines []string, s string) int {
	for i, l := range lines {
		if l == s {
			return i
		}
	}
	return -1
}

func contains(lines []string, s string) bool { return index(lines, s) >= 0 }

// proc identifies a process by PID and start time, so a recycled PID is not
// mistaken for the process recorded.
type proc struct {
	what  string
	pid   string
	start string
}

func procStart(pid string) (start string, running bool) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return "", false
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// fields[0] is the state, fields[19] the start time (stat fields 3, 22).
	if len(fields) < 20 {
		return "", false
	}
	return fields[19], fields[0] != "Z"
}

func (p proc) alive() bool {
	start, running := procStart(p.pid)
	return running && start == p.start
}

func parentPID(t *testing.T, pid string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		t.Fatalf("reading the status of pid %s: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no PPid in /proc/%s/status", pid)
	return ""
}

func containsProc(procs []proc, pid string) bool {
	for _, p := range procs {
		if p.pid == pid {
			return true
		}
	}
	return false
}

func readPID(t *testing.T, what, path string) proc {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	p := proc{what: what, pid: strings.TrimSpace(string(b))}
	var running bool
	p.start, running = procStart(p.pid)
	if !running {
		t.Fatalf("%s (pid %s from %s) is not running", what, p.pid, path)
	}
	return p
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("reading mountinfo: %v", err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// TestDownLeavesNothing brings up a second environment, leaves a pod with a
// running container in it, and checks Down ends every process the
// environment recorded and removes every mount, cgroup and file it made.
func TestDownLeavesNothing(t *testing.T) {
	Require(t)
	start := time.Now()
	env, err := Up()
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	t.Logf("Up took %s", time.Since(start).Round(time.Millisecond))
	downed := false
	t.Cleanup(func() {
		if !downed {
			_ = env.Down()
		}
	})
	rt := dial(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	sbCfg := sandboxConfig("sleeper", t.TempDir())
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	created, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleeper"},
			Image:    &runtimeapi.ImageSpec{Image: env.BusyboxImage},
			// A child as well as PID 1, both to be ended by Down.
			Command: []string{"sh", "-c", "sleep 1000 & exec sleep 1001"},
			LogPath: "sleeper.log",
		},
		SandboxConfig: sbCfg,
	})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}

	procs := []proc{readPID(t, "containerd", filepath.Join(env.Dir, "containerd.pid"))}
	var cgroupDirs, sockets []string
	tasks := filepath.Join(env.Dir, "state", "io.containerd.runtime.v2.task", "k8s.io")
	for _, id := range []string{sb.PodSandboxId, created.ContainerId} {
		bundle := filepath.Join(tasks, id)
		init := readPID(t, "init of "+id, filepath.Join(bundle, "init.pid"))
		procs = append(procs, init)
		// containerd 1.6 writes no shim.pid; the shim is the parent of the
		// container's init, being its subreaper.
		if shim := parentPID(t, init.pid); !containsProc(procs, shim) {
			start, _ := procStart(shim)
			procs = append(procs, proc{what: "shim of " + id, pid: shim, start: start})
		}
		cg, err := os.ReadFile(filepath.Join("/proc", init.pid, "cgroup"))
		if err != nil {
			t.Fatalf("reading the cgroup of %s: %v", init.what, err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(cg)), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) != 3 || !strings.HasSuffix(parts[2], "/"+id) {
				continue
			}
			hier := strings.TrimPrefix(parts[1], "name=")
			if hier == "" {
				hier = "unified" // cgroup v2 beside v1, as on these machines
			}
			if d := filepath.Join("/sys/fs/cgroup", hier, parts[2]); fileExists(d) {
				cgroupDirs = append(cgroupDirs, d)
			}
		}
		if addr, err := os.ReadFile(filepath.Join(bundle, "address")); err == nil {
			sockets = append(sockets, strings.TrimPrefix(strings.TrimSpace(string(addr)), "unix://"))
		}
	}
	ctrProcs, err := os.ReadFile(filepath.Join(cgroupDirs[0], "cgroup.procs"))
	if err != nil {
		t.Fatalf("reading the container's processes: %v", err)
	}
	for _, pid := range strings.Fields(string(ctrProcs)) {
		if containsProc(procs, pid) {
			continue
		}
		start, _ := procStart(pid)
		procs = append(procs, proc{what: "process in the container", pid: pid, start: start})
	}
	var shims int
	for _, p := range procs {
		if strings.HasPrefix(p.what, "shim") {
			shims++
			if cmd, _ := os.ReadFile(filepath.Join("/proc", p.pid, "cmdline")); !strings.Contains(string(cmd), "containerd-shim-runc-v2") {
				t.Fatalf("the parent of a container's init (pid %s) is %q, not a runc shim", p.pid, cmd)
			}
		}
	}
	if shims == 0 || len(sockets) == 0 || len(cgroupDirs) == 0 {
		t.Fatalf("recorded %d shims, sockets %v, cgroups %v: the layout under %s is not the one Down expects", shims, sockets, cgroupDirs, env.Dir)
	}
	if m := mountsUnder(t, env.Dir); len(m) == 0 {
		t.Fatalf("no mounts under %s while a container runs", env.Dir)
	}

	start = time.Now()
	err = env.Down()
	downed = true
	if err != nil {
		t.Fatalf("Down: %v", err)
	}
	t.Logf("Down took %s; it had %d processes, %d cgroup dirs and %d shim sockets to end", time.Since(start).Round(time.Millisecond), len(procs), len(cgroupDirs), len(sockets))

	for _, p := range procs {
		if p.alive() {
			t.Errorf("%s (pid %s) still runs after Down", p.what, p.pid)
		}
	}
	if _, err := os.Stat(env.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Down (stat: %v)", env.Dir, err)
	}
	if m := mountsUnder(t, env.Dir); len(m) != 0 {
		t.Errorf("still mounted after Down: %v", m)
	}
	for _, p := range append(cgroupDirs, sockets...) {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still exists after Down (stat: %v)", p, err)
		}
	}
	if err := env.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
}
