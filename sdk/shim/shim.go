// Package shim runs a task's process under a tiny per-task supervisor, the
// shim, so that the task and its exit status survive the plugin and the host.
//
// A plugin creates a Launcher and calls Launch; the shim (the
// task-executor-shim executable, whose main is Main) forks the task in its
// own process group, records the task's PID and then its exit in files under
// a state directory, enforces the task's timeout and carries out stop
// requests. The shim runs in its own session and keeps no pipe or socket to
// the plugin once the task has started, so a plugin or host that is killed
// takes nothing with it. A restarted plugin finds the shim again with Inspect
// and Wait; nothing is identified by a bare PID: a PID is trusted only
// together with the process start time recorded beside it.
//
// A Launcher keeps a few shims started ahead of time, idle until they get a
// job: starting a task then costs a message and a fork, not the start-up of
// a new program.
//
// The shim's state directory is given by the plugin (the process runtime
// uses the task's own directory, so that starting a task creates no
// directory). The directory itself is the lock: the shim holds an flock on
// it for its whole life ("is a shim alive?"). The shim's files in it
// (0600):
//
//	shim-state.json  PIDs and start time, written shortly after the task
//	                 starts (a task that ends sooner never needs it)
//	shim-exit.json   how the task ended; its presence means the task is over
//	shim.log         the shim's own log, written only when there is
//	                 something to say
package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// File names inside a state directory.
const (
	stateFile = contract.StateFile
	exitFile  = contract.ExitFile
	logFile   = contract.LogFile
)

// Spec is what a shim runs.
type Spec struct {
	// Argv is the command; Argv[0] is looked up in the PATH of Env when it
	// holds no slash.
	Argv []string `json:"argv"`
	// Env is the task's whole environment.
	Env []string `json:"env"`
	// Dir is the working directory; empty means the state directory's parent.
	Dir string `json:"dir,omitempty"`
	// Stdout and Stderr are files the task's output is appended to. With
	// MaxLogBytes, a file that does not exist is created at the stream's
	// first output (a stream the task never writes to leaves none);
	// without, both are created before the task starts.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// MaxLogBytes caps what each of Stdout and Stderr holds on disk; zero
	// means no cap. With a cap the task writes into a pipe and the shim
	// copies to the file; when the file reaches half the cap it is renamed
	// to <file>.1 (replacing an older one) and a new file starts, so the
	// newest output is kept.
	MaxLogBytes int64 `json:"maxLogBytes,omitempty"`
	// Timeout stops the task once it has run that long; zero means never.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Grace is how long a stop (or the timeout) waits between SIGTERM and
	// SIGKILL.
	Grace time.Duration `json:"grace"`
	// Namespaces, when set, is a pidfd (see pidfd_open(2)) of a process
	// whose mount, UTS, IPC, network and PID namespaces the task runs in,
	// as if started in that process's container: Argv[0] and Dir are
	// resolved there. Stdout and Stderr are opened before, on this side.
	// The caller keeps the descriptor.
	Namespaces *os.File `json:"-"`
	// NamespaceFlags are the CLONE_NEW* flags of the namespaces of
	// Namespaces to enter; zero means mount, UTS, IPC, network and PID.
	NamespaceFlags int `json:"-"`
	// ContainerGone, when set (with Namespaces), ends the task once the
	// process behind Namespaces exits, as a container's processes end with
	// its main process: the task is killed and its exit carries this
	// reason. A shim killed together with that process (the runtime killing
	// the container's cgroup) leaves no exit record; Inspect and Wait then
	// report this reason too.
	ContainerGone string `json:"-"`
	// Credentials, when set, is who the task runs as; otherwise it runs as
	// the shim does.
	Credentials *Credentials `json:"-"`
	// Cgroups are files, opened for writing, of the cgroups the task is to
	// run in: cgroup v1 "tasks" files, or cgroup.procs. The shim joins
	// each (writes "0" to it) before it starts the task, so the task is in
	// them from its first instruction, and the shim lives and dies with
	// them. The shim is single-threaded: through a v1 tasks file it moves
	// itself whole, without the RCU grace period a move of another process
	// waits for with the machine's cgroup lock held. The caller keeps the
	// files.
	Cgroups []*os.File `json:"-"`
	// OOMCounter, when set, is a cgroup file with an "oom_kill N" line
	// (cgroup v1 memory.oom_control, v2 memory.events) of the memory
	// cgroup the task runs in: a task killed by SIGKILL while that count
	// rose ends as ReasonOOMKilled. The caller keeps the file.
	OOMCounter *os.File `json:"-"`
	// Wrap, when set, is a wrapper command the task runs through (a
	// sandbox such as bwrap or firejail, "ip netns exec NAME"): Wrap[0] is
	// its absolute path, and the shim executes Wrap, then the task's
	// command as found in the task's PATH, then the task's arguments. The
	// shim checks the task's own command and working directory first, so a
	// missing command is still a StartError 127 (126, 128) saying so, not
	// the wrapper's failure. A stop's SIGTERM goes to every process of the
	// task's group but the wrapper, which would otherwise die of it before
	// the task could handle it; the SIGKILL after the grace period, to the
	// whole group. The wrapper is expected to exit as its command does,
	// a death by signal N as the exit code 128+N, as shells report it: the
	// shim reports such an exit code of the wrapper as that signal.
	Wrap []string `json:"-"`
	// Claim, when set, is called by Launcher.Launch with what
	// LauncherOptions.Prepare returned for the shim about to run the task
	// (nil without Prepare), before the job is handed over; it may set
	// Cgroups and OOMCounter (the caller keeps what it opens). An error
	// fails the launch, and the shim is discarded.
	Claim func(prepared any, spec *Spec) error `json:"-"`
}

// Credentials are who a task runs as and how it is confined, as a process
// of a container is: the fields of /proc/<pid>/status of that container's
// process, its LSM label and its seccomp filters. The shim takes them on
// in the task's process before it executes the command, in the order runc
// uses for `runc exec`. It can only take away from its own: the caller
// makes sure they are within the shim's (see CapabilitiesWithin).
type Credentials struct {
	// UID and GID are the real, effective and saved user and group IDs.
	UID, GID [3]uint32
	// Groups are the supplementary groups.
	Groups []uint32
	// Capabilities are the five capability sets.
	Capabilities Capabilities
	// NoNewPrivs sets no_new_privs.
	NoNewPrivs bool
	// Umask, when set, is the file mode creation mask.
	Umask *uint32
	// AppArmorProfile, when set, is the AppArmor profile the command is
	// executed under.
	AppArmorProfile string
	// SELinuxLabel, when set, is the SELinux label the command is executed
	// under.
	SELinuxLabel string
	// Seccomp are seccomp filters to install, oldest first.
	Seccomp []SeccompFilter
}

// Capabilities are a process's capability sets, one bit per capability.
type Capabilities struct {
	Bounding, Permitted, Effective, Inheritable, Ambient uint64
}

// SeccompFilter is a classic BPF seccomp program as the kernel returns it
// (PTRACE_SECCOMP_GET_FILTER), with the SECCOMP_FILTER_FLAG_* it was
// installed with (PTRACE_SECCOMP_GET_METADATA).
type SeccompFilter struct {
	Flags   uint32
	Program []unix.SockFilter
}

// State is what a shim records once the task runs.
type State struct {
	ShimPID int `json:"shimPid"`
	// ShimStart is the shim's start time in clock ticks since boot, as in
	// /proc/<pid>/stat: with ShimPID it names the shim unambiguously.
	ShimStart uint64    `json:"shimStart"`
	PID       int       `json:"pid"`
	PIDStart  uint64    `json:"pidStart"`
	StartedAt time.Time `json:"startedAt"`
	// HolderPID and HolderStart name the process whose namespaces the task
	// entered, when the task ends with it (Spec.ContainerGone, recorded as
	// GoneReason).
	HolderPID   int    `json:"holderPid,omitempty"`
	HolderStart uint64 `json:"holderStart,omitempty"`
	GoneReason  string `json:"goneReason,omitempty"`
}

// Exit is how a task ended.
type Exit struct {
	ExitCode int32  `json:"exitCode"`
	Signal   int32  `json:"signal,omitempty"`
	Reason   string `json:"reason"`
	Message  string `json:"message,omitempty"`
	// StartedAt is zero for a task that never started.
	StartedAt  time.Time `json:"startedAt,omitempty"`
	FinishedAt time.Time `json:"finishedAt"`
}

// Reasons an Exit carries; they match the sdk package's.
const (
	ReasonSucceeded     = contract.ReasonSucceeded
	ReasonFailed        = contract.ReasonFailed
	ReasonTaskTimeout   = contract.ReasonTaskTimeout
	ReasonStartError    = contract.ReasonStartError
	ReasonStatusUnknown = "ContainerStatusUnknown" // never written by the shim itself
	ReasonOOMKilled     = contract.ReasonOOMKilled
)

// report is a line a shim sends its launcher: once the task has started
// (or failed to), and once it has exited. Its JSON keys, and State's and
// Exit's, are the ones the shim writes (contract.ReportKeys, StateKeys,
// ExitKeys), which TestContractJSONKeys holds them to.
type report struct {
	State *State `json:"state,omitempty"`
	Exit  *Exit  `json:"exit,omitempty"`
	// Refused says why the shim could not read its job (one of another
	// format, or malformed); it then exits without starting anything.
	Refused string `json:"refused,omitempty"`
}

// ErrGone is returned when a shim is no longer running.
var ErrGone = errors.New("shim is not running")

// errPartial marks a record that exists but cannot be parsed (yet).
var errPartial = errors.New("record is incomplete")

// readJSON reads dir/name into v; a missing file gives an error wrapping
// os.ErrNotExist, one that does not parse an error wrapping errPartial.
func readJSON(dir, name string, v any) error {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("while decoding %s: %v: %w", filepath.Join(dir, name), err, errPartial)
	}
	return nil
}

// procStat returns the fields of /proc/<pid>/stat after the command name
// (field 3, the state, onwards).
func procStat(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may hold spaces and parentheses; the fields
	// after the last ')' are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return nil, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return fields, nil
}

// procStart returns the start time of a process in clock ticks since boot
// (field 22 of /proc/<pid>/stat).
func procStart(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// runningProcess reports whether pid is the process that started at start
// and has not exited (a zombie has).
func runningProcess(pid int, start uint64) bool {
	f, err := procStat(pid)
	return err == nil && f[0] != "Z" && f[0] != "X" && f[19] == strconv.FormatUint(start, 10)
}

// sameProcess reports whether pid is still the process that started at
// start; false once it has exited or the PID was reused.
func sameProcess(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	got, err := procStart(pid)
	return err == nil && got == start
}
