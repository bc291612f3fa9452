package shim

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// checkedJob is what `task-executor-shim --check-job` prints of a job it
// has read (see job_json in csrc/shim.c).
type checkedJob struct {
	Dir         string          `json:"dir"`
	Stdout      string          `json:"stdout"`
	Stderr      string          `json:"stderr"`
	Workdir     string          `json:"workdir"`
	Timeout     int64           `json:"timeout"`
	Grace       int64           `json:"grace"`
	Argv        []string        `json:"argv"`
	Env         []string        `json:"env"`
	Namespaces  bool            `json:"namespaces"`
	MaxLogBytes int64           `json:"maxLogBytes"`
	NSFlags     int             `json:"nsflags"`
	OOM         bool            `json:"oom"`
	Gone        string          `json:"gone,omitempty"`
	Wrap        []string        `json:"wrap,omitempty"`
	UID         []uint32        `json:"uid,omitempty"`
	GID         []uint32        `json:"gid,omitempty"`
	Groups      []uint32        `json:"groups,omitempty"`
	Caps        []uint64        `json:"caps,omitempty"`
	NNP         bool            `json:"nnp,omitempty"`
	Umask       *uint32         `json:"umask,omitempty"`
	AppArmor    string          `json:"apparmor,omitempty"`
	SELinux     string          `json:"selinux,omitempty"`
	Seccomp     []checkedFilter `json:"seccomp,omitempty"`
}

type checkedFilter struct {
	Flags   uint32 `json:"flags"`
	Program string `json:"program"`
}

// checkVerdict is a line the shim prints in its --check-job mode.
type checkVerdict struct {
	Job     *checkedJob `json:"job"`
	Refused string      `json:"refused"`
}

// checkJob has the shim at bin read job as if nfd descriptors had come with
// it, and returns its verdict: what it read, or why it refused. A shim that
// crashes, trips a sanitizer, hangs or prints anything but one verdict line
// fails the test. The shim's input and output are files in memory, handed
// over as they are: no goroutine copies them, so that what the fuzzer sees
// of this function's coverage is the same for the same input.
func checkJob(t *testing.T, bin string, env []string, nfd int, job []byte) checkVerdict {
	t.Helper()
	stdin, stdout, stderr := memFile(t, "job", job), memFile(t, "stdout", nil), memFile(t, "stderr", nil)
	cmd := exec.Command(bin, contract.CheckJobArg, strconv.Itoa(nfd))
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("running the shim: %v", err)
	}
	// patience only ends a shim that hangs, which is itself the failure.
	var hung atomic.Bool
	timer := time.AfterFunc(patience, func() {
		hung.Store(true)
		_ = cmd.Process.Kill()
	})
	err := cmd.Wait()
	timer.Stop()
	if hung.Load() {
		t.Fatalf("the shim did not answer within %v (job %q)", patience, job)
	}
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("running the shim: %v", err)
	}
	out, errOut := readMemFile(t, stdout), readMemFile(t, stderr)
	var v checkVerdict
	dec := json.NewDecoder(bytes.NewReader(out))
	dec.DisallowUnknownFields()
	line, rest, _ := bytes.Cut(out, []byte("\n"))
	ok := len(rest) == 0 && bytes.HasSuffix(out, []byte("\n")) && dec.Decode(&v) == nil
	switch {
	case !ok:
	case code == 0 && v.Job != nil && v.Refused == "":
		return v
	case code == 1 && v.Job == nil && (v.Refused == contract.RefusedMalformed || v.Refused == contract.RefusedOtherFormat):
		if want := refusalLine(v.Refused); string(line)+"\n" != want {
			t.Fatalf("the shim refused with %q, want the report line %q", line, want)
		}
		return v
	}
	t.Fatalf("the shim exited with %d (%v), printing %q; want a job and 0, or a refusal and 1\njob %q\nstderr:\n%s", code, err, out, job, errOut)
	return v
}

// memFile is a file in memory holding b, read from its start.
func memFile(t *testing.T, name string, b []byte) *os.File {
	t.Helper()
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatalf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), name)
	t.Cleanup(func() { f.Close() })
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

func readMemFile(t *testing.T, f *os.File) []byte {
	t.Helper()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// refusalLine is the report line of a refusal, as a launcher gets it.
func refusalLine(reason string) string {
	b, _ := json.Marshal(report{Refused: reason})
	return string(b) + "\n"
}

// jobFDs is how many descriptors go with spec's job.
func jobFDs(spec Spec) int {
	n := 1
	if spec.Namespaces != nil {
		n++
	}
	if spec.OOMCounter != nil {
		n++
	}
	return n
}

// roundTripSpecs are specs whose jobs the shim must read back as they were
// meant; they also seed FuzzShimJob.
func roundTripSpecs(devnull *os.File) map[string]Spec {
	umask := uint32(0o027)
	return map[string]Spec{
		"minimal": {Argv: []string{"true"}, Env: []string{"PATH=/bin"}, Stdout: "/t/out", Stderr: "/t/err"},
		"empty":   {},
		"odd strings": {
			Argv:   []string{"/bin/echo", `"quoted" \ back`, "new\nline", "tab\tand\x01", "ünïcode ✓", "cut\x00here", ""},
			Env:    []string{"A=1", "B=", "=weird"},
			Stdout: "/t/o ut", Stderr: "/t/é", Dir: "/work dir",
		},
		"every field": {
			Argv: []string{"sleep", "1"}, Env: []string{"PATH=/usr/bin:/bin", "HOME=/root"},
			Stdout: "/t/out", Stderr: "/t/err", Dir: "/srv",
			MaxLogBytes: 1 << 20, Timeout: 90 * time.Second, Grace: 1500 * time.Millisecond,
			Namespaces: devnull, NamespaceFlags: unix.CLONE_NEWNS | unix.CLONE_NEWPID,
			ContainerGone: "ContainerExited", OOMCounter: devnull,
			Wrap: []string{"/usr/bin/bwrap", "--die-with-parent", "--"},
			Credentials: &Credentials{
				UID: [3]uint32{1000, 1001, 1002}, GID: [3]uint32{100, 101, 4294967295},
				Groups:       []uint32{4, 24, 27},
				Capabilities: Capabilities{Bounding: 1<<41 - 1, Permitted: 0x3, Effective: 0x1, Inheritable: 0, Ambient: 1 << 63},
				NoNewPrivs:   true, Umask: &umask,
				AppArmorProfile: "docker-default", SELinuxLabel: "system_u:system_r:container_t:s0:c1,c2",
				Seccomp: []SeccompFilter{
					{Flags: 1, Program: []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0x7fff0000}}},
					{Program: []unix.SockFilter{{Code: 0x20, Jt: 1, Jf: 2, K: 4}, {Code: unix.BPF_RET | unix.BPF_K, K: 0x50001}}},
				},
			},
		},
		"identity without groups or umask": {
			Argv: []string{"id"}, Stdout: "/o", Stderr: "/e",
			Credentials: &Credentials{UID: [3]uint32{65534, 65534, 65534}, GID: [3]uint32{65534, 65534, 65534}},
		},
		"namespaces alone": {Argv: []string{"ip", "a"}, Namespaces: devnull, Timeout: -1, Grace: 0},
	}
}

// expectedJob is what the shim should read of spec's job.
func expectedJob(dir string, spec Spec) checkedJob {
	cut := func(v []string) []string {
		out := make([]string, len(v))
		for i, s := range v {
			out[i], _, _ = strings.Cut(s, "\x00")
		}
		return out
	}
	j := checkedJob{
		Dir: dir, Stdout: spec.Stdout, Stderr: spec.Stderr, Workdir: spec.Dir,
		Timeout: int64(spec.Timeout), Grace: int64(spec.Grace),
		Argv: cut(spec.Argv), Env: cut(spec.Env),
		Namespaces: spec.Namespaces != nil, MaxLogBytes: spec.MaxLogBytes, NSFlags: spec.NamespaceFlags,
		OOM: spec.OOMCounter != nil, Gone: spec.ContainerGone, Wrap: spec.Wrap,
	}
	if c := spec.Credentials; c != nil {
		// No groups is a job's "groups=": the task has none.
		j.UID, j.GID, j.Groups = c.UID[:], c.GID[:], append([]uint32{}, c.Groups...)
		caps := c.Capabilities
		j.Caps = []uint64{caps.Bounding, caps.Permitted, caps.Effective, caps.Inheritable, caps.Ambient}
		j.NNP, j.Umask, j.AppArmor, j.SELinux = c.NoNewPrivs, c.Umask, c.AppArmorProfile, c.SELinuxLabel
		j.Seccomp = []checkedFilter{}
		for _, f := range c.Seccomp {
			var b []byte
			for _, in := range f.Program {
				b = binary.NativeEndian.AppendUint16(b, in.Code)
				b = append(b, in.Jt, in.Jf)
				b = binary.NativeEndian.AppendUint32(b, in.K)
			}
			j.Seccomp = append(j.Seccomp, checkedFilter{Flags: f.Flags, Program: hex.EncodeToString(b)})
		}
	}
	return j
}

func openDevNull(t testing.TB) *os.File {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestJobRoundTrip: the shim reads every field and option of a job as the
// launcher meant it: the layout, the option names and their values agree
// on both sides.
func TestJobRoundTrip(t *testing.T) {
	t.Parallel()
	for name, spec := range roundTripSpecs(openDevNull(t)) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "shim")
			got := checkJob(t, shimBin, nil, jobFDs(spec), encodeJob(dir, spec))
			if got.Job == nil {
				t.Fatalf("the shim refused the job: %s", got.Refused)
			}
			want := expectedJob(dir, spec)
			// A nil and an empty list print alike.
			for _, p := range []*[]string{&got.Job.Argv, &got.Job.Env, &want.Argv, &want.Env} {
				if len(*p) == 0 {
					*p = nil
				}
			}
			if !reflect.DeepEqual(*got.Job, want) {
				t.Errorf("the shim read\n%+v\nwant\n%+v", *got.Job, want)
			}
		})
	}
}

// jobFields is a well-formed job with no options, as fields (format first).
func jobFields() []string {
	return []string{contract.JobFormat, "/t/shim", "/t/out", "/t/err", "", "0", "5000000000", "1", "true", "1", "PATH=/bin", "0", "0", "0"}
}

// rawJob lays fields out as a job: the length, then each NUL-terminated.
func rawJob(fields ...string) []byte {
	var body []byte
	for _, f := range fields {
		body = append(append(body, f...), 0)
	}
	return append(binary.LittleEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// with returns jobFields with field i set to v, or removed if v is nil, and
// more appended.
func with(i int, v *string, more ...string) []string {
	f := jobFields()
	if v != nil {
		f[i] = *v
	} else {
		f = append(f[:i], f[i+1:]...)
	}
	return append(f, more...)
}

func ptr(s string) *string { return &s }

// withOptions returns jobFields with opts as its options.
func withOptions(opts ...string) []string {
	f := jobFields()
	f[len(f)-1] = strconv.Itoa(len(opts))
	return append(f, opts...)
}

// refusedJobs are jobs the shim must refuse, with how many descriptors come
// with each and the refusal; they also seed FuzzShimJob.
var refusedJobs = []struct {
	name   string
	nfd    int
	job    []byte
	reason string
}{
	{"another format", 1, rawJob(with(0, ptr("tej/1"))...), contract.RefusedOtherFormat},
	{"no format", 1, rawJob(""), contract.RefusedOtherFormat},
	{"nothing", 1, nil, contract.RefusedMalformed},
	{"a short length", 1, []byte{1, 0}, contract.RefusedMalformed},
	{"a zero length", 1, []byte{0, 0, 0, 0}, contract.RefusedMalformed},
	{"a length past the end", 1, append(binary.LittleEndian.AppendUint32(nil, 1000), rawJob(jobFields()...)[4:]...), contract.RefusedMalformed},
	{"a length past the most", 1, binary.LittleEndian.AppendUint32(nil, contract.MaxJob+1), contract.RefusedMalformed},
	{"an unterminated field", 1, func() []byte { j := rawJob(jobFields()...); return j[:len(j)-1] }(), contract.RefusedMalformed},
	{"a field too few", 1, rawJob(with(13, nil)...), contract.RefusedMalformed},
	{"a field too many", 1, rawJob(with(13, ptr("0"), "extra")...), contract.RefusedMalformed},
	{"a timeout that is not a number", 1, rawJob(with(5, ptr("5s"))...), contract.RefusedMalformed},
	{"a timeout after a space", 1, rawJob(with(5, ptr(" 5"))...), contract.RefusedMalformed},
	{"an empty grace", 1, rawJob(with(6, ptr(""))...), contract.RefusedMalformed},
	{"a grace past int64", 1, rawJob(with(6, ptr("9223372036854775808"))...), contract.RefusedMalformed},
	{"more arguments than fields", 1, rawJob(with(7, ptr("99"))...), contract.RefusedMalformed},
	{"a negative argument count", 1, rawJob(with(7, ptr("-1"))...), contract.RefusedMalformed},
	{"namespaces neither 0 nor 1", 1, rawJob(with(11, ptr("2"))...), contract.RefusedMalformed},
	{"namespaces without their descriptor", 1, rawJob(with(11, ptr(contract.FieldTrue))...), contract.RefusedMalformed},
	{"a descriptor too many", 2, rawJob(jobFields()...), contract.RefusedMalformed},
	{"a negative output cap", 1, rawJob(with(12, ptr("-1"))...), contract.RefusedMalformed},
	{"more options than fields", 1, rawJob(with(13, ptr("3"))...), contract.RefusedMalformed},
	{"an unknown option", 1, rawJob(withOptions("frobnicate=1")...), contract.RefusedMalformed},
	{"an option without a value", 1, rawJob(withOptions(contract.OptNSFlags)...), contract.RefusedMalformed},
	{"namespace flags that are not a number", 1, rawJob(withOptions(contract.OptNSFlags + "=x")...), contract.RefusedMalformed},
	{"an OOM counter without its descriptor", 1, rawJob(withOptions(contract.OptOOM + "=1")...), contract.RefusedMalformed},
	{"an OOM option that is not 1", 2, rawJob(withOptions(contract.OptOOM + "=2")...), contract.RefusedMalformed},
	{"a container's end without namespaces", 1, rawJob(withOptions(contract.OptGone + "=Gone")...), contract.RefusedMalformed},
	{"a wrapper by a relative path", 1, rawJob(withOptions(contract.OptWrap + "=bwrap")...), contract.RefusedMalformed},
	{"an identity without its user", 1, rawJob(withOptions(contract.OptNNP + "=1")...), contract.RefusedMalformed},
	{"a user of two IDs", 1, rawJob(withOptions(contract.OptUID+"=1,2", contract.OptGID+"=1,2,3")...), contract.RefusedMalformed},
	{"a signed user", 1, rawJob(withOptions(contract.OptUID+"=+1,2,3", contract.OptGID+"=1,2,3")...), contract.RefusedMalformed},
	{"capabilities in C's hex", 1, rawJob(withOptions(contract.OptUID+"=0,0,0", contract.OptGID+"=0,0,0", contract.OptCaps+"=0x1,0,0,0,0")...), contract.RefusedMalformed},
	{"a umask past 0777", 1, rawJob(withOptions(contract.OptUID+"=0,0,0", contract.OptGID+"=0,0,0", contract.OptUmask+"=1000")...), contract.RefusedMalformed},
	{"a seccomp program that is not hex", 1, rawJob(withOptions(contract.OptUID+"=0,0,0", contract.OptGID+"=0,0,0", contract.OptSeccomp+"=0:zz00000000000000")...), contract.RefusedMalformed},
	{"a seccomp program of half an instruction", 1, rawJob(withOptions(contract.OptUID+"=0,0,0", contract.OptGID+"=0,0,0", contract.OptSeccomp+"=0:00000000")...), contract.RefusedMalformed},
}

// TestCheckJobRefuses: the shim refuses each job of refusedJobs with the
// report line a launcher would get, and reads the well-formed job they are
// made from. (TestJobRefused has a launched shim refuse.)
func TestCheckJobRefuses(t *testing.T) {
	t.Parallel()
	if v := checkJob(t, shimBin, nil, 1, rawJob(jobFields()...)); v.Job == nil {
		t.Fatalf("the well-formed job was refused: %s", v.Refused)
	}
	for _, c := range refusedJobs {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if v := checkJob(t, shimBin, nil, c.nfd, c.job); v.Refused != c.reason {
				t.Fatalf("the shim read %+v (refused %q), want the refusal %q", v.Job, v.Refused, c.reason)
			}
		})
	}
}

// sanitizedShim builds the shim for FuzzShimJob into dir with the address
// and undefined-behaviour sanitizers, so that a read out of bounds or an
// overflow fails at once rather than when it happens to crash. They need
// the C library's dynamic linking (libasan), so the compiler is cc (for
// gcc, glibc's), not musl-gcc; where they cannot be had, it is the plain
// shim. It returns the executable, its environment and how it was built.
func sanitizedShim(t testing.TB, dir string) (bin string, env []string, how string) {
	bin = filepath.Join(dir, "task-executor-shim-sanitized")
	src := filepath.Join(dir, "shim.c")
	if err := os.WriteFile(src, source, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "contract.h"), header, 0o600); err != nil {
		t.Fatal(err)
	}
	// Leaks are of no concern in a process that reads one job and exits;
	// each finding exits with a code of its own, which no verdict has.
	env = []string{"ASAN_OPTIONS=detect_leaks=0:exitcode=86", "UBSAN_OPTIONS=print_stacktrace=1:exitcode=87"}
	// -O0: every fuzzing process builds it, and compiles twice as fast so;
	// the parser's speed does not matter beside a process's start.
	flags := []string{"-O0", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
		"-Wall", "-Wno-format-truncation", "-o", bin, src}
	out, err := exec.Command("cc", flags...).CombinedOutput()
	if err == nil {
		// A runtime the machine cannot host (shadow memory refused) shows
		// only when run.
		probe := exec.Command(bin, contract.CheckJobArg, "1")
		probe.Env = env
		got, perr := probe.Output()
		if string(got) == refusalLine(contract.RefusedMalformed) {
			return bin, env, "cc -fsanitize=address,undefined"
		}
		out = fmt.Appendf(nil, "running it: %v %q", perr, got)
	}
	t.Logf("no sanitizers for the fuzzed shim (%s); fuzzing the plain one", bytes.TrimSpace(out))
	return shimBin, nil, Compiler() + ", without sanitizers"
}

// FuzzShimJob feeds arbitrary jobs, with one to three descriptors, to the
// shim's job parser (the real shim, in its --check-job mode): it must read
// each whole or refuse it with the report a launcher gets, and never crash,
// trip a sanitizer or hang. The seeds are jobs of the real encoder, the
// refusals of TestCheckJobRefuses, and truncated and garbled variants.
func FuzzShimJob(f *testing.F) {
	bin, env, how := sanitizedShim(f, f.TempDir())
	f.Logf("fuzzing the shim built with %s", how)
	for _, c := range refusedJobs {
		f.Add(uint8(c.nfd-1), c.job)
	}
	for _, spec := range roundTripSpecs(openDevNull(f)) {
		nfd, job := uint8(jobFDs(spec)-1), encodeJob("/t/shim", spec)
		f.Add(nfd, job)
		for _, n := range []int{3, 4, 5, len(job) / 2, len(job) - 1} {
			f.Add(nfd, job[:n])
		}
		garbled := bytes.Clone(job)
		for i := 4; i < len(garbled); i += 7 {
			garbled[i] ^= 0x5a
		}
		f.Add(nfd, garbled)
	}
	f.Fuzz(func(t *testing.T, nfd uint8, job []byte) {
		checkJob(t, bin, env, 1+int(nfd%3), job)
	})
}

// TestLaunchRefusesWhatAShimCannotTake: a launch that a shim could not take
// whole (more cgroup files than one message carries, a job longer than a
// shim reads) fails saying so, rather than with the shim's refusal read as
// something else, and the shim it took ends without running anything.
func TestLaunchRefusesWhatAShimCannotTake(t *testing.T) {
	t.Parallel()
	devnull := openDevNull(t)
	cases := []struct {
		name   string
		mutate func(*Spec)
		says   string
	}{
		{"more cgroups than a message carries", func(s *Spec) {
			for range contract.MaxJoin + 1 {
				s.Cgroups = append(s.Cgroups, devnull)
			}
		}, "more than one message carries"},
		{"a job longer than a shim reads", func(s *Spec) {
			s.Env = append(s.Env, "BIG="+strings.Repeat("x", contract.MaxJob))
		}, "more than a shim reads"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			k := newTask(t)
			l := &Launcher{path: shimBin}
			sh, err := l.spawn()
			if err != nil {
				t.Fatal(err)
			}
			// Taken before anything can end the shim: ESRCH would mean it
			// is already gone.
			pidfd, pidErr := unix.PidfdOpen(sh.pid, unix.PIDFD_NONBLOCK)
			l.idle = []*idleShim{sh}
			spec := k.spec("/bin/touch", k.path("ran"))
			tc.mutate(&spec)
			if _, err := l.Launch(t.Context(), k.dir, spec); err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Launch: %v, want an error saying %q", err, tc.says)
			}
			if pidErr == nil {
				defer unix.Close(pidfd)
				ctx, cancel := context.WithTimeout(t.Context(), patience)
				defer cancel()
				if err := awaitPidfd(ctx, pidfd); err != nil {
					t.Fatalf("the shim given no job did not exit: %v", err)
				}
			}
			for _, name := range []string{"ran", filepath.Join("shim", stateFile), filepath.Join("shim", exitFile)} {
				if _, err := os.Stat(k.path(name)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s after the failed launch: %v", name, err)
				}
			}
		})
	}
}
