package shim

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// statusFields reads the identity lines of a /proc/<pid>/status dump.
func statusFields(out string) map[string]string {
	f := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			f[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return f
}

// Capability bits used below (linux/capability.h).
const (
	capChown          = 1 << 0
	capKill           = 1 << 5
	capSetgid         = 1 << 6
	capSetuid         = 1 << 7
	capNetBindService = 1 << 10
)

// denyMkdir is a seccomp filter failing mkdir(2) and mkdirat(2) with
// EPERM, for this machine's architecture.
func denyMkdir(t *testing.T) SeccompFilter {
	const (
		ldW     = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq     = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret     = unix.BPF_RET | unix.BPF_K
		allow   = 0x7fff0000 // SECCOMP_RET_ALLOW
		errnoRt = 0x00050000 // SECCOMP_RET_ERRNO
	)
	var nrs []uint32
	switch runtime.GOARCH {
	case "amd64":
		nrs = []uint32{83, 258} // mkdir, mkdirat
	case "arm64":
		nrs = []uint32{34} // mkdirat
	default:
		t.Fatalf("no mkdir syscall numbers for %s", runtime.GOARCH)
	}
	prog := []unix.SockFilter{{Code: ldW, K: 0}} // seccomp_data.nr
	for i, nr := range nrs {
		// Jump to the deny at the end when equal.
		prog = append(prog, unix.SockFilter{Code: jeq, K: nr, Jt: uint8(len(nrs) - i)})
	}
	prog = append(prog, unix.SockFilter{Code: ret, K: allow}, unix.SockFilter{Code: ret, K: errnoRt | uint32(unix.EPERM)})
	return SeccompFilter{Program: prog}
}

func TestCredentials(t *testing.T) {
	t.Parallel()
	umask := uint32(0o027)
	cases := []struct {
		name   string
		cred   Credentials
		script string
		// want are lines of /proc/self/status; wantOut lines the script
		// prints after it.
		want    map[string]string
		wantOut []string
	}{{
		name: "unprivileged user, no capabilities, no_new_privs",
		cred: Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1001, 1001, 1001}, Groups: []uint32{5, 1001}, NoNewPrivs: true, Umask: &umask},
		want: map[string]string{
			"Uid": "1000 1000 1000 1000", "Gid": "1001 1001 1001 1001", "Groups": "5 1001",
			"CapInh": "0000000000000000", "CapPrm": "0000000000000000", "CapEff": "0000000000000000",
			"CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1", "Umask": "0027",
			"Seccomp": "0",
		},
	}, {
		name: "root with a reduced set",
		cred: Credentials{Capabilities: Capabilities{
			Bounding: capChown | capKill | capSetuid, Permitted: capChown | capKill | capSetuid,
			Effective: capChown | capKill | capSetuid,
		}},
		want: map[string]string{
			"Uid": "0 0 0 0", "Groups": "", "CapPrm": "00000000000000a1", "CapEff": "00000000000000a1",
			"CapBnd": "00000000000000a1", "CapAmb": "0000000000000000", "NoNewPrivs": "0",
		},
	}, {
		name: "unprivileged user with an ambient capability",
		cred: Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1000, 1000, 1000}, Capabilities: Capabilities{
			Bounding: capNetBindService | capKill, Permitted: capNetBindService, Effective: capNetBindService,
			Inheritable: capNetBindService, Ambient: capNetBindService,
		}},
		want: map[string]string{
			"Uid": "1000 1000 1000 1000", "CapInh": "0000000000000400", "CapPrm": "0000000000000400",
			"CapEff": "0000000000000400", "CapBnd": "0000000000000420", "CapAmb": "0000000000000400",
		},
	}, {
		name:    "seccomp filter with no_new_privs (installed last)",
		cred:    Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1000, 1000, 1000}, NoNewPrivs: true, Seccomp: []SeccompFilter{denyMkdir(t)}},
		script:  `mkdir /tmp/never-$$ 2>/dev/null && echo mkdir=ok || echo mkdir=denied`,
		want:    map[string]string{"Seccomp": "2", "Seccomp_filters": "1", "NoNewPrivs": "1", "Uid": "1000 1000 1000 1000"},
		wantOut: []string{"mkdir=denied"},
	}, {
		name: "seccomp filters without no_new_privs (installed first, while privileged)",
		cred: Credentials{Seccomp: []SeccompFilter{denyMkdir(t), denyMkdir(t)}, Capabilities: Capabilities{
			Bounding: capChown, Permitted: capChown, Effective: capChown,
		}},
		script:  `mkdir /tmp/never-$$ 2>/dev/null && echo mkdir=ok || echo mkdir=denied`,
		want:    map[string]string{"Seccomp": "2", "Seccomp_filters": "2", "NoNewPrivs": "0", "CapEff": "0000000000000001"},
		wantOut: []string{"mkdir=denied"},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			spec := k.sh(`grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs|Seccomp|Seccomp_filters|Umask):' /proc/self/status; ` + c.script)
			spec.Dir = "/" // the test's temporary directories are root's alone
			cred := c.cred
			spec.Credentials = &cred
			exit := k.wait(k.started(spec))
			out, _ := os.ReadFile(k.stdout)
			errOut, _ := os.ReadFile(k.stderr)
			if exit.ExitCode != 0 {
				t.Fatalf("task: %+v\nstdout: %s\nstderr: %s", exit, out, errOut)
			}
			got := statusFields(string(out))
			for k, want := range c.want {
				if got[k] != want {
					t.Errorf("%s: %q, want %q", k, got[k], want)
				}
			}
			for _, w := range c.wantOut {
				if !strings.Contains(string(out), w+"\n") {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestCredentialsStartErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		cred     Credentials
		dirMode  os.FileMode
		wantCode int32
		wantMsg  string
	}{{
		name:     "a capability beyond the shim's permitted set",
		cred:     Credentials{UID: [3]uint32{1000, 1000, 1000}, Capabilities: Capabilities{Effective: capChown}},
		dirMode:  0o755,
		wantCode: 128, wantMsg: "while setting the task's capabilities: operation not permitted",
	}, {
		name:     "a working directory the task's user cannot enter",
		cred:     Credentials{UID: [3]uint32{1000, 1000, 1000}, GID: [3]uint32{1000, 1000, 1000}},
		dirMode:  0o700,
		wantCode: 128, wantMsg: "working directory: chdir",
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			if err := os.Chmod(k.root, c.dirMode); err != nil {
				t.Fatal(err)
			}
			spec := k.spec("/bin/true")
			cred := c.cred
			spec.Credentials = &cred
			res := k.launch(spec)
			if res.Exit == nil || res.Exit.Reason != ReasonStartError || res.Exit.ExitCode != c.wantCode || !strings.Contains(res.Exit.Message, c.wantMsg) {
				t.Fatalf("got %+v, want a StartError %d saying %q", res, c.wantCode, c.wantMsg)
			}
		})
	}
}

// testCgroup makes a memory cgroup under this test's own, limited to
// limit bytes, and returns its cgroup.procs (for writing) and OOM counter.
// It is removed when the test ends (the processes in it are ended by then).
func testCgroup(t *testing.T, limit int64) (procs, oom *os.File, dir string) {
	t.Helper()
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var v1, v2 string
	for _, line := range strings.Split(strings.TrimSpace(string(self)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				v1 = parts[2]
			}
		}
	}
	name := fmt.Sprintf("shim-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	limitFile, counter := "memory.limit_in_bytes", "memory.oom_control"
	switch {
	case v1 != "":
		dir = filepath.Join("/sys/fs/cgroup/memory", v1, name)
	case v2 != "":
		dir = filepath.Join("/sys/fs/cgroup", v2, name)
		limitFile, counter = "memory.max", "memory.events"
	default:
		t.Fatalf("no memory cgroup in %q", self)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("making a memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		deadline := time.Now().Add(patience)
		for {
			err := os.Remove(dir)
			if err == nil || os.IsNotExist(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("removing the cgroup %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
		t.Fatalf("limiting the cgroup: %v", err)
	}
	// The file the shim joins through (v1: tasks, where the shim moving
	// itself waits for no RCU grace period).
	join := "tasks"
	if v1 == "" {
		join = "cgroup.procs"
	}
	if procs, err = os.OpenFile(filepath.Join(dir, join), os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { procs.Close() })
	if oom, err = os.Open(filepath.Join(dir, counter)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { oom.Close() })
	return procs, oom, dir
}

func TestCgroupsAndOOMKilled(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name       string
		script     string
		stop       bool // stopped (grace 0: SIGKILL) once it runs
		wantReason string
		wantCode   int32
	}{
		{"allocating past the limit", "exec dd if=/dev/zero of=/dev/null bs=100M count=1", false, ReasonOOMKilled, 137},
		{"killed otherwise", "kill -9 $$", false, ReasonFailed, 137},
		{"stopped", "sleep 60", true, ReasonFailed, 137},
		{"within the limit", "exec dd if=/dev/zero of=/dev/null bs=1M count=1", false, ReasonSucceeded, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			procs, oom, dir := testCgroup(t, 32<<20)
			k := newTask(t)
			spec := k.sh("cat /proc/self/cgroup; " + c.script)
			spec.Cgroups, spec.OOMCounter = []*os.File{procs}, oom
			st := k.started(spec)
			if c.stop {
				// The shim moved in before it started the task.
				if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err != nil || !strings.Contains(string(b), strconv.Itoa(st.ShimPID)+"\n") {
					t.Errorf("the shim %d is not in the cgroup: %q (%v)", st.ShimPID, b, err)
				}
				k.stop(0)
			}
			exit := k.wait(st)
			if exit.Reason != c.wantReason || exit.ExitCode != c.wantCode {
				t.Fatalf("exit %+v, want %s %d", exit, c.wantReason, c.wantCode)
			}
			if out, _ := os.ReadFile(k.stdout); !strings.Contains(string(out), filepath.Base(dir)+"\n") {
				t.Errorf("the task did not run in the cgroup %s: %s", dir, out)
			}
		})
	}
}

// TestCgroupJoinFails: a cgroup the shim cannot join fails the launch with
// the file's name and the kernel's reason, and the task never runs.
func TestCgroupJoinFails(t *testing.T) {
	t.Parallel()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	k := newTask(t)
	marker := k.path("ran")
	spec := k.sh("touch " + marker)
	spec.Cgroups = []*os.File{full}
	ctx, cancel := context.WithTimeout(t.Context(), patience)
	defer cancel()
	_, err = Launch(ctx, shimBin, k.dir, spec)
	if err == nil || !strings.Contains(err.Error(), "/dev/full") || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Launch: %v, want the join of /dev/full failing with ENOSPC", err)
	}
	// The job is handed over only after the join: no shim took it.
	if _, _, err := Inspect(ctx, k.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Inspect after the failed launch: %v, want none launched", err)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the task ran: %v", err)
	}
}

// startHolder starts a process in namespaces of its own (mount, UTS, IPC,
// network, PID), the stand-in for a container's main process, and returns
// it with a pidfd of it.
func startHolder(t *testing.T) (pid int, pidfd *os.File) {
	t.Helper()
	cmd := exec.Command("unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--fork", "sleep", "600")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	eventually(t, "the holder runs", func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return pid > 0 && strings.TrimSpace(string(comm)) == "sleep"
	})
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	pidfd = os.NewFile(uintptr(fd), "holder")
	t.Cleanup(func() { pidfd.Close() })
	return pid, pidfd
}

func TestContainerGone(t *testing.T) {
	t.Parallel()
	const reason = "HolderGone"
	cases := []struct {
		name       string
		killShim   bool // the shim dies with the holder, as in a killed cgroup
		killHolder bool
		wantReason string
	}{
		{"the shim ends the task", false, true, reason},
		{"the shim dies with the holder", true, true, reason},
		{"the shim dies alone", true, false, ReasonStatusUnknown},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			holder, pidfd := startHolder(t)
			k := newTask(t)
			spec := k.spec("sleep", "600")
			spec.Dir = "/"
			spec.Namespaces, spec.ContainerGone = pidfd, reason
			st := k.started(spec)
			// Wait records where the task ran before it is killed.
			eventually(t, "the shim records the task", func() bool {
				var rec State
				return readJSON(k.dir, stateFile, &rec) == nil && rec.HolderPID == holder
			})
			if c.killShim {
				_ = syscall.Kill(st.ShimPID, syscall.SIGKILL)
			}
			if c.killHolder {
				_ = syscall.Kill(holder, syscall.SIGKILL)
			}
			exit := k.wait(st)
			if exit.Reason != c.wantReason || exit.ExitCode != 137 {
				t.Fatalf("exit %+v, want %s 137", exit, c.wantReason)
			}
			eventually(t, "the task is gone", func() bool { return !running(st.PID, st.PIDStart) })
		})
	}
}

// TestJobRefused: a job the shim cannot read whole is refused, with the
// reason reported to the launcher, and nothing runs: an option it does not
// know (options carry confinement, which must never be dropped silently),
// or a job of another format (a launcher of another version).
func TestJobRefused(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		mutate func(job []byte) []byte
		says   string
	}{
		{"unknown option", func(job []byte) []byte {
			// Replace the option count "0" at the end with one unknown option.
			return append(job[:len(job)-2], []byte("1\x00frobnicate=1\x00")...)
		}, contract.RefusedMalformed},
		{"another format", func(job []byte) []byte {
			return append(append(job[:4:4], "tej/1"...), job[4+len(jobFormat):]...)
		}, contract.RefusedOtherFormat},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := &Launcher{path: shimBin}
			sh, err := l.spawn()
			if err != nil {
				t.Fatal(err)
			}
			defer sh.conn.Close()
			k := newTask(t)
			marker := k.path("ran")
			if err := os.MkdirAll(k.dir, 0o700); err != nil {
				t.Fatal(err)
			}
			lock, err := lockDir(k.dir)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Close()
			job := tc.mutate(encodeJob(k.dir, k.spec("/bin/touch", marker)))
			binary.LittleEndian.PutUint32(job, uint32(len(job)-4))
			if _, _, err := sh.conn.WriteMsgUnix([]byte{'J'}, unix.UnixRights(int(lock.Fd())), nil); err != nil {
				t.Fatal(err)
			}
			if _, err := sh.conn.Write(job); err != nil {
				t.Fatal(err)
			}
			_ = sh.conn.SetReadDeadline(time.Now().Add(patience))
			r := bufio.NewReader(sh.conn)
			line, err := r.ReadString('\n')
			var rep report
			if err != nil || json.Unmarshal([]byte(line), &rep) != nil || rep.Refused != tc.says {
				t.Fatalf("the shim answered %q (%v); want a refusal saying %q", line, err, tc.says)
			}
			// Then it exits: EOF, not a timeout.
			if _, err := r.ReadString('\n'); !errors.Is(err, io.EOF) {
				t.Fatalf("after its refusal the shim's socket gave %v, want EOF", err)
			}
			if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the refused job ran: %v", err)
			}
		})
	}
}
