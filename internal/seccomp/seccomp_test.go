package seccomp

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim"
)

func TestMain(m *testing.M) {
	if os.Getenv(wrapSeccompEnv) == "1" {
		wrapSeccomp(os.Args[1:])
	}
	os.Exit(m.Run())
}

// wrapSeccompEnv makes the test binary a wrapper that installs denyMkdir
// and executes its arguments (see TestMain).
const wrapSeccompEnv = "NSENTER_TEST_WRAP_SECCOMP"

// denyMkdir is a seccomp filter failing mkdir(2) and mkdirat(2) with EPERM.
func denyMkdir() []unix.SockFilter {
	const (
		ldW   = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		allow = 0x7fff0000
		errno = 0x00050000
	)
	nrs := map[string][]uint32{"amd64": {83, 258}, "arm64": {34}}[runtime.GOARCH]
	prog := []unix.SockFilter{{Code: ldW}}
	for i, nr := range nrs {
		prog = append(prog, unix.SockFilter{Code: jeq, K: nr, Jt: uint8(len(nrs) - i)})
	}
	return append(prog, unix.SockFilter{Code: ret, K: allow}, unix.SockFilter{Code: ret, K: errno | uint32(unix.EPERM)})
}

// wrapSeccomp installs denyMkdir in this thread and executes args from it:
// the filter is kept across the exec.
func wrapSeccomp(args []string) {
	runtime.LockOSThread()
	prog := denyMkdir()
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, 1 /* SECCOMP_SET_MODE_FILTER */, 0, uintptr(unsafe.Pointer(&fprog))); e != 0 {
		fmt.Fprintln(os.Stderr, "seccomp:", e)
		os.Exit(1)
	}
	path, err := exec.LookPath(args[0])
	if err == nil {
		err = syscall.Exec(path, args, os.Environ())
	}
	fmt.Fprintln(os.Stderr, "exec:", err)
	os.Exit(1)
}

func TestReadFilters(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, filtered := range []bool{true, false} {
		t.Run(fmt.Sprint("filtered=", filtered), func(t *testing.T) {
			cmd := exec.Command("sleep", "60")
			if filtered {
				cmd = exec.Command(self, "sleep", "60")
				cmd.Env = append(os.Environ(), wrapSeccompEnv+"=1")
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			eventually(t, "the process runs sleep", func() bool {
				comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
				return strings.TrimSpace(string(comm)) == "sleep"
			})
			got, err := ReadFilters(cmd.Process.Pid)
			if err != nil {
				t.Fatal(err)
			}
			var want []shim.SeccompFilter
			if filtered {
				want = []shim.SeccompFilter{{Program: denyMkdir()}}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("read %v, want %v", got, want)
			}
			// The process goes on as before.
			eventually(t, "the process sleeps again, no longer stopped", func() bool {
				b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
				return strings.Contains(string(b), ") S ")
			})
		})
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
