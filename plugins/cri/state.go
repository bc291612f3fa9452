package cri

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// What the plugin keeps in a task's directory. Containerd holds the rest
// (the sandbox, the container, its exit code) and is found again by label,
// so the plugin process itself holds nothing a crash could lose. Each file
// is written once, atomically, so a crash leaves it either whole or absent.
const (
	// attemptFile holds the attempt ID, written before anything is created
	// in containerd: a task with this file may have objects there.
	attemptFile = "cri-attempt"
	// timeoutFile marks a task stopped for its timeout, written before the
	// stop, so the reason survives a restart in the middle.
	timeoutFile = "cri-timeout"
	// exitFile is the task's final status, written before the task's
	// objects are removed from containerd.
	exitFile = "cri-exit.json"
	// logFile is the container's log, in the CRI log format, which
	// containerd writes into the task's directory.
	logFile = sdk.ContainerLog
	// ownerFile in the data directory holds this executor's owner ID.
	ownerFile = ".cri-owner"
)

// exitRecord is the JSON of exitFile.
type exitRecord struct {
	ExitCode   int32     `json:"exitCode"`
	Signal     int32     `json:"signal,omitempty"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt"`
}

func (e exitRecord) status(name string) sdk.TaskStatus {
	return sdk.TaskStatus{Name: name, State: sdk.Terminated(e.ExitCode, e.Signal, e.Reason, e.Message, e.StartedAt, e.FinishedAt)}
}

func recordOf(st sdk.TaskStatus) exitRecord {
	t := st.State.Terminated
	return exitRecord{
		ExitCode: t.ExitCode, Signal: t.Signal, Reason: t.Reason, Message: t.Message,
		StartedAt: t.StartedAt.Time, FinishedAt: t.FinishedAt.Time,
	}
}

// readExit returns the task's recorded final status, if any.
func readExit(dir string) (*exitRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, exitFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("while reading the exit record: %w", err)
	}
	var e exitRecord
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("while reading the exit record %s: %w", filepath.Join(dir, exitFile), err)
	}
	return &e, nil
}

func writeExit(dir string, e exitRecord) error {
	b, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("while encoding the exit record: %w", err)
	}
	return writeOnce(dir, exitFile, b)
}

// readAttempt returns the task's attempt ID, or "" if it has none yet.
func readAttempt(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, attemptFile))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("while reading the attempt ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ensureAttempt returns the task's attempt ID, making one if it has none.
func ensureAttempt(dir string) (string, error) {
	if id, err := readAttempt(dir); id != "" || err != nil {
		return id, err
	}
	id, err := randomID(6)
	if err != nil {
		return "", err
	}
	if err := writeOnce(dir, attemptFile, []byte(id+"\n")); errors.Is(err, fs.ErrExist) {
		// Another start got there first: its ID is the task's.
		return readAttempt(dir)
	} else if err != nil {
		return "", err
	}
	return id, nil
}

func timedOut(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, timeoutFile))
	return err == nil
}

func markTimedOut(dir string) error {
	err := writeOnce(dir, timeoutFile, nil)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	return err
}

// ownerID returns this executor's owner ID, kept in the data directory so
// that it outlives restarts. Executors of different pods share the node's
// containerd; each finds only its own objects by it.
func ownerID(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, ownerFile))
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("while reading the owner ID: %w", err)
	}
	id, err := randomID(8)
	if err != nil {
		return "", err
	}
	if err := writeOnce(dataDir, ownerFile, []byte(id+"\n")); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	// Whoever wrote it first wins.
	b, err = os.ReadFile(filepath.Join(dataDir, ownerFile))
	if err != nil {
		return "", fmt.Errorf("while reading the owner ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func randomID(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("while making a random ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// writeOnce creates dir/name with content, durably, and fails with
// fs.ErrExist if it is already there. The content goes to a temporary file
// first and is linked into place, so a reader never sees half of it.
func writeOnce(dir, name string, content []byte) error {
	tmp, err := os.CreateTemp(dir, "."+name+".tmp-*")
	if err != nil {
		return fmt.Errorf("while writing %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return fmt.Errorf("while writing %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("while syncing %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("while writing %s: %w", name, err)
	}
	if err := os.Link(tmp.Name(), filepath.Join(dir, name)); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("while writing %s: %w", name, fs.ErrExist)
		}
		return fmt.Errorf("while writing %s: %w", name, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("while syncing the directory of %s: %w", name, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("while syncing the directory of %s: %w", name, err)
	}
	return nil
}
