// Package shim runs a task's process under a tiny per-task supervisor, the
// shim, so that the task and its exit status survive the plugin and the host.
//
// A plugin calls Launch; the shim (the task-executor-shim executable, whose
// main is Main) forks the task in its own process group, records the task's
// PID and then its exit in files under a state directory, enforces the
// task's timeout and carries out stop requests. The shim runs in its own
// session with no pipe to the plugin left open, so a plugin or host that is
// killed takes nothing with it. A restarted plugin finds the shim again with
// Inspect and Wait; nothing is identified by a bare PID: a PID is trusted only
// together with the process start time recorded beside it.
//
// Files in the state directory (0700, files 0600):
//
//	spec.json   what to run (written by Launch)
//	lock        flock held by the shim for its whole life: "is a shim alive?"
//	ctl         FIFO the shim reads stop requests from
//	state.json  PIDs and start time, once the task runs
//	exit.json   how the task ended; its presence means the task is over
//	shim.log    the shim's own log
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
)

// File names inside a state directory.
const (
	specFile  = "spec.json"
	lockFile  = "lock"
	ctlFile   = "ctl"
	stateFile = "state.json"
	exitFile  = "exit.json"
	logFile   = "shim.log"
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
	// Stdout and Stderr are files the task's output is appended to.
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	// Timeout stops the task once it has run that long; zero means never.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Grace is how long a stop (or the timeout) waits between SIGTERM and
	// SIGKILL.
	Grace time.Duration `json:"grace"`
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
	ReasonSucceeded     = "Succeeded"
	ReasonFailed        = "Failed"
	ReasonTaskTimeout   = "TaskTimeout"
	ReasonStartError    = "StartError"
	ReasonStatusUnknown = "ContainerStatusUnknown"
)

// report is the one line a shim writes to its launcher once the task has
// started or failed to.
type report struct {
	State *State `json:"state,omitempty"`
	Exit  *Exit  `json:"exit,omitempty"`
}

// ErrGone is returned when a shim is no longer running.
var ErrGone = errors.New("shim is not running")

// writeJSON writes v to dir/name atomically: a reader sees the old file or
// the new one, never a part. It does not fsync: these files must survive
// the death of processes, which the page cache already guarantees; the host
// makes results durable against power loss in its own store.
func writeJSON(dir, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("while encoding %s: %w", name, err)
	}
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("while writing %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("while renaming %s into place: %w", name, err)
	}
	return nil
}

// readJSON reads dir/name into v; a missing file gives an error wrapping
// os.ErrNotExist.
func readJSON(dir, name string, v any) error {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("while decoding %s: %w", filepath.Join(dir, name), err)
	}
	return nil
}

// procStart returns the start time of a process in clock ticks since boot
// (field 22 of /proc/<pid>/stat).
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the fields
	// after the last ')' are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
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
