package podtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Ports from here up to the ephemeral range (32768 on): ephemeral ports are
// handed to outgoing connections at any moment and collide on a busy machine.
const (
	portLow  = 10000
	portHigh = 32767
)

// given are the ports this process has handed out, so two pods of one test
// binary never get the same one between checking it and binding it.
var given = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort picks a port on 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	given.Lock()
	defer given.Unlock()
	for range 200 {
		port := portLow + rand.IntN(portHigh-portLow+1)
		if given.ports[port] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		l.Close()
		given.ports[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("no free port found between %d and %d", portLow, portHigh)
}

// memoryCapacity is the node's memory as the kubelet counts it (MemTotal).
func memoryCapacity() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, fmt.Errorf("while reading the node's memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("while reading MemTotal %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

// hugePageSizes are the node's huge page sizes in the CRI's notation
// ("2MB", "1GB"), as the kubelet lists them.
func hugePageSizes() []string {
	entries, err := os.ReadDir("/sys/kernel/mm/hugepages")
	if err != nil {
		return nil
	}
	units := []string{"B", "KB", "MB", "GB", "TB", "PB"}
	var out []string
	for _, e := range entries {
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(e.Name(), "hugepages-"), "kB"), 10, 64)
		if err != nil {
			continue
		}
		size, u := kb<<10, 0
		for size >= 1024 && size%1024 == 0 && u < len(units)-1 {
			size /= 1024
			u++
		}
		out = append(out, strconv.FormatInt(size, 10)+units[u])
	}
	slices.Sort(out)
	return out
}

const cgroup2Magic = 0x63677270

func cgroupV2Only() bool {
	var st syscall.Statfs_t
	return syscall.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == cgroup2Magic
}

// swapController tells how the kubelet would keep containers from
// swapping here, by the swap files its cgroups have.
func swapController() swapControl {
	if cgroupV2Only() {
		if path, ok := ownCgroup("", "0::"); ok && exists(filepath.Join("/sys/fs/cgroup", path, "memory.swap.max")) {
			return swapV2
		}
		return swapNone
	}
	if exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes") {
		return swapV1
	}
	return swapNone
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// ownCgroup finds, in /proc/<pid>/cgroup ("" for self), the path of the
// line starting with prefix ("0::" for v2, or a v1 controller's).
func ownCgroup(pid, prefix string) (string, bool) {
	if pid == "" {
		pid = "self"
	}
	b, err := os.ReadFile(filepath.Join("/proc", pid, "cgroup"))
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, prefix); ok {
			return rest, true
		}
	}
	return "", false
}

// memoryLimit reads the memory limit of a process's cgroup.
func memoryLimit(pid int) (int64, error) {
	var file string
	if cgroupV2Only() {
		path, ok := ownCgroup(strconv.Itoa(pid), "0::")
		if !ok {
			return 0, fmt.Errorf("no cgroup v2 path for pid %d", pid)
		}
		file = filepath.Join("/sys/fs/cgroup", path, "memory.max")
	} else {
		path, ok := "", false
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
		if err != nil {
			return 0, fmt.Errorf("while reading the cgroups of pid %d: %w", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			parts := strings.SplitN(line, ":", 3)
			if len(parts) == 3 && slices.Contains(strings.Split(parts[1], ","), "memory") {
				path, ok = parts[2], true
			}
		}
		if !ok {
			return 0, fmt.Errorf("no memory cgroup for pid %d", pid)
		}
		file = filepath.Join("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, fmt.Errorf("while reading the memory limit of pid %d: %w", pid, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// proc is a process, told from a later one with its PID by its start time.
type proc struct {
	pid   int
	start uint64
	cmd   string
}

func (p proc) String() string { return fmt.Sprintf("%d (%s)", p.pid, p.cmd) }

// procStat returns a process's start time, and whether it runs (a zombie
// runs nothing: its parent reaps it in its own time).
func procStat(pid int) (start uint64, running bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, false
	}
	// The command may hold blanks and parentheses: the fields follow the
	// last ')'.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 20 {
		return 0, false
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	return start, err == nil && fields[0] != "Z"
}

func (p proc) alive() bool {
	start, running := procStat(p.pid)
	return running && start == p.start
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
}

func parentPID(pid int) int {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	return 0
}

// isShim tells containerd's runc shim, the parent of a pod's processes.
func isShim(pid int) bool { return strings.Contains(cmdline(pid), "containerd-shim") }

func pidNS(pid int) string {
	ns, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", "pid"))
	return ns
}

// podProcesses returns the given processes and every process in their PID
// namespaces (the node's own excepted, should one of them be in it).
func podProcesses(pids []int) []proc {
	self := pidNS(os.Getpid())
	nss := map[string]bool{}
	seen := map[int]bool{}
	var out []proc
	add := func(pid int) {
		if seen[pid] {
			return
		}
		if start, running := procStat(pid); running {
			seen[pid] = true
			out = append(out, proc{pid: pid, start: start, cmd: cmdline(pid)})
		}
	}
	for _, pid := range pids {
		add(pid)
		if ns := pidNS(pid); ns != "" && ns != self {
			nss[ns] = true
		}
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err == nil && nss[pidNS(pid)] {
			add(pid)
		}
	}
	return out
}

// waitGone waits up to d for the processes to end and returns those still
// running.
func waitGone(procs []proc, d time.Duration) []proc {
	deadline := time.Now().Add(d)
	for {
		var alive []proc
		for _, p := range procs {
			if p.alive() {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 || time.Now().After(deadline) {
			return alive
		}
		time.Sleep(pollEvery)
	}
}

// killAll sends SIGKILL to each process that is still the one recorded.
func killAll(procs []proc) {
	for _, p := range procs {
		if p.alive() {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	waitGone(procs, goneTimeout)
}

// mountsUnder lists the mount points at or under dir in this process's
// mount namespace, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	return out
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a blank).
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func unmount(path string) error {
	if err := syscall.Unmount(path, 0); err != nil {
		return syscall.Unmount(path, syscall.MNT_DETACH)
	}
	return nil
}
