package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Everything a restart of the plugin must not lose lives in the task's
// directory, beside the host's task.json:
//
//   - retry-job.json: what to run, written by the plugin before it starts
//     the task's supervisor, which reads it.
//   - retry-status.json: the task's progress (attempts so far, and how it
//     ended), written only by the supervisor, always by an atomic rename.
//   - retry.lock: locked (flock) by the supervisor for as long as it lives.
//     A lock that can be taken means no supervisor runs, with no PID to be
//     recycled in between.
//   - retry-stop.log: stop requests, one line each ("stop <grace in ns>"),
//     appended by the plugin (a short O_APPEND write lands whole) and read
//     by the supervisor, which makes the file when it starts and follows
//     it with inotify. A request appended after the supervisor has ended
//     is read by nobody, and needs no one: the plugin sees the task end.
//   - retry-supervisor.log: the supervisor's own stderr, for post-mortems.
const (
	jobFile    = "retry-job.json"
	statusFile = "retry-status.json"
	lockFile   = "retry.lock"
	stopFile   = "retry-stop.log"
	logFile    = "retry-supervisor.log"
)

// job is what a supervisor runs: the task's command, resolved against the
// task's spec and the plugin's settings.
type job struct {
	Argv    []string `json:"argv"`
	Env     []string `json:"env"`
	Dir     string   `json:"dir"`
	Stdout  string   `json:"stdout"`
	Stderr  string   `json:"stderr"`
	Options options  `json:"options"`
	// Timeout bounds the task as a whole, every attempt and backoff
	// included; zero means none.
	Timeout time.Duration `json:"timeout"`
	// Grace is the time between SIGTERM and SIGKILL when the timeout
	// strikes (a stop request carries its own).
	Grace time.Duration `json:"grace"`
}

// attempt is one run of the task's command.
type attempt struct {
	PID        int       `json:"pid"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	ExitCode   int32     `json:"exitCode"`
	Signal     int32     `json:"signal,omitempty"`
}

// result is how a task ended.
type result struct {
	ExitCode   int32     `json:"exitCode"`
	Signal     int32     `json:"signal,omitempty"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	FinishedAt time.Time `json:"finishedAt"`
}

// record is the content of retry-status.json.
type record struct {
	// SupervisorPID is for operators (and tests) who must kill a task by
	// hand; the plugin itself goes by the lock, never by PID.
	SupervisorPID int `json:"supervisorPid"`
	// StartedAt is when the first attempt started: the task's start, which
	// retries do not move.
	StartedAt   time.Time `json:"startedAt,omitzero"`
	MaxAttempts int       `json:"maxAttempts"`
	Attempts    []attempt `json:"attempts"`
	// Result is set once the task has ended; it never changes afterwards.
	Result *result `json:"result,omitempty"`
}

// writeJSON replaces path's content with v's JSON atomically: a reader (or
// a restarted plugin) sees the old content or the new, never a torn file.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("while encoding %s: %w", filepath.Base(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("while writing %s: %w", filepath.Base(path), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("while replacing %s: %w", filepath.Base(path), err)
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("while decoding %s: %w", filepath.Base(path), err)
	}
	return nil
}

// readRecord reads a task's status record; found is false if the task's
// supervisor never recorded anything.
func readRecord(dir string) (rec record, found bool, err error) {
	err = readJSON(filepath.Join(dir, statusFile), &rec)
	if errors.Is(err, os.ErrNotExist) {
		return rec, false, nil
	}
	return rec, err == nil, err
}

// openLock opens (creating) a task's lock file; the caller locks it.
func openLock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("while opening the task's lock: %w", err)
	}
	return f, nil
}

// unlock releases f's lock and closes f. The lock is let go of explicitly
// because a process forked meanwhile (another task's supervisor, on its
// way to exec) may hold a copy of the descriptor, and with it the lock.
func unlock(f *os.File) {
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	f.Close()
}

// tryLock takes f's lock if nobody holds it; held reports that somebody
// (a live supervisor) does.
func tryLock(f *os.File) (held bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return true, nil
	}
	return false, fmt.Errorf("while locking the task's lock: %w", err)
}
