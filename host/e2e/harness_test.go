// Package e2e drives the built task-executor binaries (host, shim, process
// plugin) over real HTTP, with real processes.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/internal/testbin"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/client"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// binDir holds the binaries built once for the whole package, laid out as
// `make build` lays them out.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "task-executor-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = filepath.Join(dir, "bin")
	if err := build(binDir); err != nil {
		fmt.Fprintln(os.Stderr, "building the binaries:", err)
		os.Exit(1)
	}
	// The build left its binaries and Go's cache for the kernel to write
	// back within the next half minute; written now, they do not compete
	// with the fsyncs of the first tests or benchmarks.
	syscall.Sync()
	// A private containerd for the container-mode tests (see
	// internal/containerdtest: mandatory in CI, loudly skipped elsewhere).
	code := containerdtest.Main(m)
	if left := leftCgroups(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "task cgroups left after the tests: %v\n", left)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(bin string) error {
	return testbin.Executor(context.Background(), filepath.Join(bin, "task-executor"), testbin.Options{})
}

// hostProc is a running task-executor host.
type hostProc struct {
	t       testing.TB
	dataDir string
	// exe is the host's executable, binDir's unless privateExecutable.
	exe string
	// pluginDir is its --plugin-dir ("": the built-in runtimes alone).
	pluginDir string
	// argv, when set, are all of the host's arguments, in place of the
	// harness's (which args extends).
	argv []string
	// early: start returns as soon as the host listens (it serves /health
	// then), not once it serves everything.
	early bool
	args  []string
	// env is added to the host's environment (a later entry wins).
	env []string
	// holdLogs, when set, stops the reading of the host's stderr once the
	// host serves, until it is closed, on a pipe shrunk to one page: a log
	// reader that has stopped.
	holdLogs chan struct{}
	cmd      *exec.Cmd
	url      string
	logs     *syncBuffer
	exited   chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dataRoot, when set, holds the hosts' data directories instead of the
// tests' temporary directories: `make bench` puts them in the repository,
// the data directory `make run` uses, where the disk behaves as it does for
// a long-lived data directory rather than a /tmp churned by test runs. They
// are left there for the caller to remove once all benchmarks are done:
// on a file system without a journal (ext4 as on the development
// machines), deleting thousands of files makes every file created in the
// next minutes dearer (measured: 16 us for an empty file before, 98 us
// after), which a benchmark would then pay for the one before it.
var dataRoot = flag.String("data-root", "", "directory for the hosts' data directories, left in place (default: each test's temporary directory, removed)")

// dataDir returns a new, empty data directory path for a host of t.
func dataDir(t testing.TB) string {
	if *dataRoot == "" {
		return filepath.Join(t.TempDir(), "data")
	}
	if err := os.MkdirAll(*dataRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(*dataRoot, "data-")
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "data")
}

// startHost starts a host on a free port with a new data directory.
func startHost(t testing.TB, extra ...string) *hostProc {
	t.Helper()
	h := &hostProc{t: t, dataDir: dataDir(t), args: extra}
	h.start()
	t.Cleanup(h.cleanup)
	return h
}

// start launches the host process on h's data directory and waits until it
// serves.
func (h *hostProc) start() {
	t := h.t
	t.Helper()
	args := []string{
		"--listen-addr", "127.0.0.1:0", "--data-dir", h.dataDir,
		"--log-format", "json", "--grace-period", "2s",
		"--log-level", "debug",
	}
	if h.pluginDir != "" {
		args = append(args, "--plugin-dir", h.pluginDir)
	}
	args = append(args, h.args...)
	if h.argv != nil {
		args = h.argv
	}
	cmd := exec.Command(h.executable(), args...)
	// The executable's own shim, whatever the caller's environment says.
	cmd.Env = append(append(os.Environ(), "TASK_EXECUTOR_SHIM="), h.env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.logs = &syncBuffer{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if h.holdLogs != nil {
		if _, err := unix.FcntlInt(stderr.(*os.File).Fd(), unix.F_SETPIPE_SZ, os.Getpagesize()); err != nil {
			t.Fatal(err)
		}
	}
	h.cmd = cmd
	h.exited = make(chan struct{})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			h.logs.Write(append(append([]byte(nil), line...), '\n'))
			var m map[string]any
			want := "serving"
			if h.early {
				want = strings.SplitN(listeningMessage, ";", 2)[0]
			}
			if json.Unmarshal(line, &m) == nil && strings.SplitN(fmt.Sprint(m["@message"]), ";", 2)[0] == want {
				if a, ok := m["addr"].(string); ok {
					addr <- a
					if h.holdLogs != nil {
						<-h.holdLogs
					}
				}
			}
		}
		_ = cmd.Wait()
		close(h.exited)
	}()
	select {
	case a := <-addr:
		h.url = "http://" + a
	case <-h.exited:
		t.Fatalf("the host exited before serving:\n%s", h.logs.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("the host did not start serving in time:\n%s", h.logs.String())
	}
}

// kill9 kills the host with SIGKILL and waits until it is gone.
func (h *hostProc) kill9() {
	h.t.Helper()
	_ = h.cmd.Process.Signal(syscall.SIGKILL)
	<-h.exited
}

// stop sends SIGTERM and waits for a clean exit.
func (h *hostProc) stop() {
	h.t.Helper()
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		h.t.Fatalf("the host did not exit after SIGTERM:\n%s", h.logs.String())
	}
}

// socketDir returns the directory the host said its plugins' sockets are
// in ("" if it named none).
func (h *hostProc) socketDir() string {
	dir := ""
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["@message"] == "serving" {
			dir, _ = m["pluginSockets"].(string)
		}
	}
	return dir
}

// restart starts a new host process on the same data directory.
func (h *hostProc) restart() {
	h.t.Helper()
	h.start()
}

// cleanup ends the host and every process its tasks left, by PID.
func (h *hostProc) cleanup() {
	if h.cmd != nil && h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Signal(syscall.SIGKILL)
		<-h.exited
	}
	killTasks(h.dataDir)
	releaseDataDir(h.t, h.dataDir)
	// The sockets the plugins of a killed host left, which only the next
	// host on the data directory would clear.
	if dir := h.socketDir(); dir != "" {
		_ = os.RemoveAll(dir)
	}
	if h.t.Failed() {
		h.t.Logf("host log:\n%s", h.logs.String())
	}
}

// shimState is the part of a shim's state.json the tests use.
type shimState struct {
	ShimPID   int    `json:"shimPid"`
	ShimStart uint64 `json:"shimStart"`
	PID       int    `json:"pid"`
	PIDStart  uint64 `json:"pidStart"`
}

func readShimState(dataDir, name string) (shimState, error) {
	var st shimState
	b, err := os.ReadFile(filepath.Join(dataDir, name, "shim-state.json"))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(b, &st)
}

// shimState waits for a task's shim to record its state (shortly after the
// task starts) and returns it.
func (h *hostProc) shimState(name string) shimState {
	h.t.Helper()
	var st shimState
	eventually(h.t, 10*time.Second, func() bool {
		var err error
		st, err = readShimState(h.dataDir, name)
		return err == nil
	}, func() string { return "task " + name + "'s shim never recorded its state" })
	return st
}

// killTasks kills, by PID, the shim and the process group of every task in
// dataDir whose recorded identity still matches.
func killTasks(dataDir string) {
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		st, err := readShimState(dataDir, e.Name())
		if err != nil {
			continue
		}
		if procStart(st.PID) == st.PIDStart {
			_ = syscall.Kill(-st.PID, syscall.SIGKILL)
		}
		if procStart(st.ShimPID) == st.ShimStart {
			_ = syscall.Kill(st.ShimPID, syscall.SIGKILL)
		}
	}
	// A shim handed its task just before the host died has recorded no
	// state yet; it is found by the files it holds in the data directory.
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids := holdersOf(dataDir)
		if len(pids) == 0 || time.Now().After(deadline) {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdersOf returns the processes (not zombies, not containerd's) with a
// file open under dir.
func holdersOf(dir string) []int {
	if dir == "" {
		return nil
	}
	procs, _ := os.ReadDir("/proc")
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() || !alive(pid) {
			continue
		}
		// containerd's shims hold a container's log there, and go with
		// the test's containerd.
		if exe, _ := os.Readlink(filepath.Join("/proc", p.Name(), "exe")); strings.HasPrefix(filepath.Base(exe), "containerd") {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name()))
			if err == nil && strings.HasPrefix(target, dir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// procStart returns a process's start time (0 if it does not exist).
func procStart(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	v, _ := strconv.ParseUint(fields[19], 10, 64)
	return v
}

// procPPID returns a process's parent PID (0 if it does not exist).
func procPPID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	v, _ := strconv.Atoi(fields[1])
	return v
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	return s[strings.LastIndexByte(s, ')')+2] != 'Z'
}

// children returns the child PIDs of pid.
func children(pid int) []int {
	paths, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	var out []int
	for _, p := range paths {
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// listeningMessage is the host's log line once it listens.
const listeningMessage = "listening; serving /health, the rest once the runtimes have started"

// executable is the host's executable.
func (h *hostProc) executable() string {
	if h.exe != "" {
		return h.exe
	}
	return filepath.Join(binDir, "task-executor")
}

// privateExecutable gives h a copy of task-executor of its own, so the test
// may take it away (and with it the built-in runtimes' plugin); it takes
// effect at the next (re)start.
func (h *hostProc) privateExecutable() {
	h.t.Helper()
	exe := filepath.Join(h.t.TempDir(), "task-executor")
	b, err := os.ReadFile(filepath.Join(binDir, "task-executor"))
	if err == nil {
		err = os.WriteFile(exe, b, 0o755)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	h.exe = exe
}

// builtinPluginFile is a plugin file of a plugin directory that serves a
// built-in runtime: a script that starts task-executor as that plugin (a
// plugin directory's plugins are started with no arguments).
func builtinPluginFile(name string) []byte {
	return []byte("#!/bin/sh\nexec " + filepath.Join(binDir, "task-executor") + " plugin " + name + "\n")
}

// pluginPID returns the PID of the host's process plugin.
func (h *hostProc) pluginPID() int {
	h.t.Helper()
	return h.pluginPIDOf("process")
}

// pluginPIDOf returns the PID of the host's plugin of that name.
func (h *hostProc) pluginPIDOf(name string) int {
	h.t.Helper()
	if pid := h.pluginNow(name); pid != 0 {
		return pid
	}
	h.t.Fatalf("no %s plugin among the host's children", name)
	return 0
}

// pluginNow returns the PID of the host's plugin of that name, 0 while
// there is none.
func (h *hostProc) pluginNow(name string) int {
	for _, c := range children(h.cmd.Process.Pid) {
		if pluginName(c) == name {
			return c
		}
	}
	return 0
}

// pluginName names the runtime the process pid serves as a plugin: a
// built-in ("task-executor plugin NAME") or one of a plugin directory
// (started with no arguments, by its file's name); "" for another process.
func pluginName(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	switch {
	case len(argv) == 3 && filepath.Base(argv[0]) == "task-executor" && argv[1] == "plugin":
		return argv[2]
	case len(argv) == 1 && filepath.Base(argv[0]) != "task-executor-shim" && filepath.Base(argv[0]) != "task-executor":
		return filepath.Base(argv[0])
	}
	return ""
}

// do sends a request and returns the status code and body.
func (h *hostProc) do(method, path string, body any) (int, []byte) {
	h.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.url+path, r)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// mustDo is do that fails the test unless the status is want.
func (h *hostProc) mustDo(want int, method, path string, body any) []byte {
	h.t.Helper()
	code, out := h.do(method, path, body)
	if code != want {
		h.t.Fatalf("%s %s: got %d, want %d: %s", method, path, code, want, out)
	}
	return out
}

// client returns an API client of the host as it serves now (a restart
// changes its address).
func (h *hostProc) client() *client.Client {
	h.t.Helper()
	c, err := client.New(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// requestTimeout bounds a helper's request, so that a hung host fails the
// test rather than hanging it.
const requestTimeout = 30 * time.Second

func (h *hostProc) get(name string) (client.Task, bool) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	t, err := h.client().Get(ctx, name)
	if client.IsNotFound(err) {
		return client.Task{}, false
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return t, true
}

func (h *hostProc) list() []client.Task {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	ts, err := h.client().List(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	return ts
}

// waitTerminated long-polls until the task has terminated and returns it.
func (h *hostProc) waitTerminated(name string, within time.Duration) client.Task {
	h.t.Helper()
	c := h.client()
	deadline := time.Now().Add(within)
	var last client.Task
	for {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			h.t.Fatalf("after %s: task %s never terminated; last: %+v", within, name, last.Status.State)
		}
		ctx, cancel := context.WithTimeout(context.Background(), remaining+requestTimeout)
		t, err := c.GetWait(ctx, name, min(remaining, api.MaxWait))
		cancel()
		switch {
		case err == nil:
			if last = t; t.Terminated() {
				return t
			}
		case client.IsNotFound(err):
			// Not there (yet, or any more): a long poll would answer at
			// once, so this is a plain poll.
			time.Sleep(5 * time.Millisecond)
		default:
			h.t.Fatal(err)
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, cond func() bool, msg func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, msg())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// processTask builds a process task.
func processTask(name string, command ...string) map[string]any {
	return map[string]any{"name": name, "spec": map[string]any{"process": map[string]any{"command": command}}}
}

// shTask runs a shell script.
func shTask(name, script string) map[string]any {
	return processTask(name, "sh", "-c", script)
}

// cgroupRuntimes are the runtimes with task cgroups the tests run: the
// process runtime, the stuck plugin's copy of it, the example bwrap
// runtime, and nsenter (below the cgroup of a test's main process, which is
// the test's own).
var cgroupRuntimes = []string{"process", "stuck", "nsenter", "bwrap"}

// removeTaskCgroups removes what a host on dataDir left of its task
// cgroups: a host killed with its tasks leaves their cgroups, as a killed
// kubelet leaves its containers'.
func removeTaskCgroups(t testing.TB, dataDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, rt := range cgroupRuntimes {
		mgr, err := cgroups.New("", shimdriver.CgroupID(dataDir, rt))
		if err != nil {
			t.Errorf("task cgroups: %v", err)
			return
		}
		// The spare cgroups of the plugin's idle shims, which a plugin's
		// next start would remove.
		if err := mgr.RemoveSpares(ctx); err != nil {
			t.Errorf("removing spare cgroups: %v", err)
		}
		for _, p := range mgr.Parents() {
			entries, _ := os.ReadDir(p)
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				if g, err := mgr.Group(e.Name()); err == nil {
					if err := g.Remove(ctx); err != nil {
						t.Errorf("removing a task cgroup: %v", err)
					}
				}
			}
		}
		if err := mgr.RemoveParents(); err != nil {
			t.Errorf("removing the task cgroups' parents: %v", err)
		}
	}
}

// hostDataDirs are the data directories of every host the tests started.
var hostDataDirs sync.Map

// releaseDataDir removes the task cgroups hosts on dataDir left and has the
// package's last check (leftCgroups) look at them again: a plugin that
// outlives its host by a moment may make a spare meanwhile. Every test that
// runs a host on a data directory of its own calls it when done, however
// the host ended (a host that refuses to start has launched its plugins
// already).
func releaseDataDir(t testing.TB, dataDir string) {
	removeTaskCgroups(t, dataDir)
	hostDataDirs.Store(dataDir, true)
}

// leftCgroups lists the task cgroups (and their parents) that the hosts
// of these tests left. Other packages' tests, which may run at the same
// time in the same cgroup, have cgroups of their own data directories.
func leftCgroups() []string {
	var left []string
	hostDataDirs.Range(func(k, _ any) bool {
		for _, rt := range cgroupRuntimes {
			probe, err := cgroups.New("", shimdriver.CgroupID(k.(string), rt))
			if err != nil {
				left = append(left, err.Error())
				return false
			}
			// A plugin killed with its host goes on a moment (until it
			// sees its host gone) and may make a spare cgroup after its
			// host's cleanup: by design the next start on that data
			// directory removes it, and this plays that start. Task
			// cgroups are another matter: none may be left.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err = probe.RemoveSpares(ctx)
			cancel()
			if err != nil {
				left = append(left, err.Error())
			}
			for _, p := range probe.Parents() {
				entries, _ := os.ReadDir(p)
				for _, e := range entries {
					if e.IsDir() {
						left = append(left, filepath.Join(p, e.Name()))
					}
				}
			}
			// The probe made the parents again where they were gone.
			_ = probe.RemoveParents()
		}
		return true
	})
	return left
}
