package runtimetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Container is a stand-in for a container, for testing runtimes that run
// tasks inside one (a sidecar's main container): a process in new mount,
// UTS, IPC, network and PID namespaces, with its own /proc, a tmpfs on
// /tmp (so nothing of the test's temporary directories is visible inside)
// and its own host name. It needs root and unshare(1).
type Container struct {
	// Pid is the container's main process, PID 1 inside, as the test sees it.
	Pid int
	// Hostname is the container's host name.
	Hostname string
	unshare  *exec.Cmd
}

// StartContainer starts a Container whose main process has env in its
// environment (for example "SANDBOX_MAIN_CONTAINER=main") and runs in /tmp/wd
// inside. It is ended when t ends.
func StartContainer(t testing.TB, hostname string, env ...string) *Container {
	t.Helper()
	return StartContainerAs(t, hostname, nil, env...)
}

// StartContainerAs is StartContainer with the main process started
// through wrap, a command that runs its arguments under another identity
// and must end by executing them (for example setpriv(1) with a user,
// capabilities and no_new_privs), as a container runtime starts a
// container's process as its securityContext says.
func StartContainerAs(t testing.TB, hostname string, wrap []string, env ...string) *Container {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("StartContainer needs root (it creates namespaces)")
	}
	for _, kv := range append(append([]string(nil), env...), wrap...) {
		if strings.ContainsAny(kv, "'\n") {
			t.Fatalf("argument %q cannot be passed", kv)
		}
	}
	prefix := ""
	if len(wrap) > 0 {
		prefix = "'" + strings.Join(wrap, "' '") + "' "
	}
	script := fmt.Sprintf("mount -t tmpfs tmpfs /tmp && mkdir -m 0777 /tmp/wd && cd /tmp/wd && hostname %s && exec env '%s' %ssleep 3600",
		hostname, strings.Join(env, "' '"), prefix)
	cmd := exec.Command("unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--fork", "--mount-proc", "sh", "-c", script)
	if err := cmd.Start(); err != nil {
		t.Fatalf("cannot start a container: %v", err)
	}
	c := &Container{Hostname: hostname, unshare: cmd}
	t.Cleanup(c.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The main process is unshare's child, once it has exec'd sleep.
		for _, pid := range childrenOf(cmd.Process.Pid) {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "sleep" {
				c.Pid = pid
				return c
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the container's main process did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Namespace returns the identity of one of the container's namespaces
// ("pid", "mnt", "net", "uts", "ipc"), as readlink /proc/<pid>/ns/<ns> shows
// it.
func (c *Container) Namespace(t testing.TB, ns string) string {
	t.Helper()
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", c.Pid, ns))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Processes lists the live processes in the container's PID namespace, as
// the test sees their PIDs.
func (c *Container) Processes(t testing.TB) []int {
	t.Helper()
	want := c.Namespace(t, "pid")
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "pid")); err == nil && ns == want && !zombie(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// Stop ends the container: its main process (PID 1 inside: the kernel
// kills everything else in the namespace with it), then unshare.
func (c *Container) Stop() {
	if c.Pid > 0 {
		_ = syscall.Kill(c.Pid, syscall.SIGKILL)
		c.Pid = 0
	}
	if c.unshare != nil && c.unshare.ProcessState == nil {
		_ = c.unshare.Process.Kill()
		_ = c.unshare.Wait()
	}
}

func childrenOf(pid int) []int {
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

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}
