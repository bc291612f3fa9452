// Package store keeps the host's durable record of every task: one
// directory per task under the data directory, holding task.json (the
// host's record, and then the task's final state) beside whatever the
// runtime keeps there (the task's output files, shim state).
//
// A task's directory appears whole, record included (a prepared directory
// is renamed into place). A create counts as done once its record is in
// the create log, synced (see createlog.go); the record itself is synced
// within FlushInterval. A deletion is synced, file and directory, before
// it counts as done; a final state within FlushInterval.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/internal/beneath"
	"github.com/opensandbox/task-executor/sdk"
)

// RecordFile is the name of the host's record inside a task's directory.
const RecordFile = "task.json"

// Names the store uses in the data directory. Task names are DNS-1123
// subdomains and cannot start with a dot, so these never collide.
const (
	trashPrefix   = ".trash-"
	sparePrefix   = ".spare-"
	quarantineDir = ".quarantine"
)

// Record is the host's record of a task: task.json, written when the task
// is created, completed by the final state (appended to it) and by
// deletion.json (see SetFinal and MarkDeleted).
type Record struct {
	Name      string       `json:"name"`
	Spec      sdk.TaskSpec `json:"spec"`
	Runtime   string       `json:"runtime"`
	CreatedAt time.Time    `json:"createdAt"`
	// DeletionTimestamp is set once a deletion has been accepted.
	DeletionTimestamp *time.Time `json:"deletionTimestamp,omitempty"`
	// DeletionGracePeriod is the grace period of that deletion.
	DeletionGracePeriod time.Duration `json:"deletionGracePeriod,omitempty"`
	// State is the last state the host knew.
	State corev1.ContainerState `json:"state"`
	// Format is the format the task was created in, which its answers
	// use: FormatNested or FormatCompat; empty in the records of older
	// versions, whose answers carry both.
	Format string `json:"format,omitempty"`
}

// The formats a task is created in (see Record.Format).
const (
	FormatNested = "nested"
	FormatCompat = "compat"
)

// ErrExists is returned by Create for a task that already has a record.
var ErrExists = errors.New("task already exists")

// ErrNoSpace wraps write errors caused by a full disk or quota.
var ErrNoSpace = errors.New("no space left for the task store")

// ErrReadOnly wraps write errors caused by a read-only data directory.
var ErrReadOnly = errors.New("the task store is read-only")

// Store is the data directory.
type Store struct {
	dir     string
	log     hclog.Logger
	spares  *spares
	flusher flusher
	// reserve is space kept for deletions and final states on a full disk.
	reserve *reserve

	// quarantined are the task directories the last Load moved aside.
	qmu         sync.Mutex
	quarantined []string
	// clog is the create log; nil where it could not be made (a full or
	// read-only disk), and then a create syncs its record itself.
	clog *createLog
}

// Open opens (creating if needed) the data directory dir.
func Open(dir string, log hclog.Logger) (*Store, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("while resolving the data directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("while creating the data directory: %w", classify(err))
	}
	// Task specs and output are nobody else's business: a directory made
	// elsewhere (a volume, an older version) is closed to others too.
	if fi, err := os.Stat(abs); err == nil && fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(abs, fi.Mode().Perm()&0o700); err != nil {
			log.Warn("cannot make the data directory private; others may read task specs and output", "dir", abs, "error", err)
		}
	}
	st := &Store{dir: abs, log: log, reserve: newReserve(abs)}
	if st.reserve.full() && st.reserve.release() {
		// Shims that could not record a task's exit while the executor
		// was down retry until they can: let them, before the runtimes
		// are asked what became of their tasks.
		log.Warn("the data directory's disk is full; gave up the space set aside, so that exits and deletions can be recorded", "dir", abs)
	} else if !st.reserve.keep() {
		log.Warn("cannot set space aside for deletions on a full disk; a DELETE may then fail with 507", "file", st.reserve.path)
	}
	st.spares = newSpares(abs, log)
	st.flusher.store = st
	clog, entries, err := openLog(abs, log)
	if err != nil {
		if !errors.Is(err, ErrNoSpace) && !errors.Is(err, ErrReadOnly) {
			return nil, err
		}
		// Creates will fail as well, and say why; the log (and whatever
		// it holds) waits for a start with room to write.
		log.Warn("cannot open the create log; creates sync their records themselves", "error", err)
		return st, nil
	}
	if err := clog.replay(st, entries); err != nil {
		clog.close()
		return nil, fmt.Errorf("while restoring records from the create log: %w", err)
	}
	st.clog = clog
	return st, nil
}

// Close stops the store's background work and removes the directories it
// prepared ahead. Records stay.
func (s *Store) Close() {
	s.spares.close()
	s.flusher.close()
	if s.clog != nil {
		s.clog.close()
	}
}

// Root returns the data directory's absolute path.
func (s *Store) Root() string { return s.dir }

// Dir returns a task's directory.
func (s *Store) Dir(name string) string { return filepath.Join(s.dir, name) }

// Create records new tasks. When it returns, the records are written, but
// not yet durable: commit makes them so, and must succeed before the
// creation is acknowledged to anyone. In between the caller may already act
// on them (start the task): a crash before commit can only lose records no
// client was told about. On error nothing of the batch is left behind; when
// commit fails, the caller removes the tasks (Remove) once it has undone
// whatever it started. A name that already has a record gives an error
// wrapping ErrExists.
func (s *Store) Create(recs ...Record) (commit func() error, err error) {
	names := make([]string, len(recs))
	payloads := make([][]byte, len(recs))
	for i, rec := range recs {
		names[i] = rec.Name
		if payloads[i], err = json.Marshal(rec); err != nil {
			return nil, fmt.Errorf("while encoding the record of task %q: %w", rec.Name, err)
		}
	}
	created := make([]string, 0, len(recs))
	var mu sync.Mutex
	err = parallel(len(recs), func(i int) error {
		if err := s.createOne(names[i], payloads[i]); err != nil {
			return err
		}
		mu.Lock()
		created = append(created, names[i])
		mu.Unlock()
		return nil
	})
	if err != nil {
		for _, name := range created {
			_ = os.RemoveAll(s.Dir(name))
		}
		return nil, err
	}
	return func() error {
		if s.clog != nil {
			err := s.clog.append(s, names, payloads)
			if err == nil {
				s.flusher.kick() // the checkpoint
			}
			if !errors.Is(err, errLogTooSmall) {
				return err
			}
		}
		// Every file and directory of the batch is synced at once: the
		// disk's cache flushes they ask for are merged by the block layer
		// (one flush instead of three per task where a file system without
		// a journal flushes on every fsync), and the order does not matter,
		// since no client hears of a task before all of them are done.
		paths := make([]string, 0, 2*len(recs)+1)
		for _, name := range names {
			paths = append(paths, filepath.Join(s.Dir(name), RecordFile), s.Dir(name))
		}
		if err := syncAll(append(paths, s.dir)); err != nil {
			return fmt.Errorf("while making new task records durable: %w", classify(err))
		}
		return nil
	}, nil
}

// createOne writes a new task's record into a prepared directory and
// renames the directory into place: the task appears whole or not at all.
func (s *Store) createOne(name string, b []byte) error {
	spare, err := s.spares.take()
	if err != nil {
		return fmt.Errorf("while preparing the directory of task %q: %w", name, classify(err))
	}
	if err := writeNew(filepath.Join(spare, RecordFile), b); err != nil {
		_ = os.RemoveAll(spare)
		return fmt.Errorf("while writing the record of task %q: %w", name, classify(err))
	}
	dir := s.Dir(name)
	for attempt := 0; ; attempt++ {
		err := unix.Renameat2(unix.AT_FDCWD, spare, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EEXIST) || attempt > 0 {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("while creating the directory of task %q: %w", name, classify(err))
		}
		if _, err := os.Stat(filepath.Join(dir, RecordFile)); err == nil {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("task %q: %w", name, ErrExists)
		}
		// A directory without a record is what a create that crashed
		// half-way leaves: it was never acknowledged, so it goes.
		if err := os.RemoveAll(dir); err != nil {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("while removing an incomplete directory of task %q: %w", name, classify(err))
		}
	}
}

// writeNew writes b into the empty file a prepared directory holds. Not
// with O_TRUNC: truncating even an empty file costs ext4 a metadata update
// (measured: 40-49 us for the write instead of 11-13 us), on the path of
// every create.
func writeNew(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncFile is f.Sync; tests replace it to see what gets synced.
var syncFile = (*os.File).Sync

// syncAll fsyncs files and directories all at once (see Create's commit).
func syncAll(paths []string) error {
	return parallel(len(paths), func(i int) error { return syncOne(paths[i]) })
}

// syncOne fsyncs a file or a directory.
func syncOne(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = syncFile(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// replaceFile durably replaces dir's file name with data: written whole to
// a new file, synced, renamed over the old one and the rename synced, so
// that a crash leaves the old file or the new one.
func replaceFile(dir, name string, data []byte) error {
	path := filepath.Join(dir, name)
	tmp := path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncOne(dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

// What completes a task's record is written once, in place, and never
// replaced: replacing a file frees its blocks, and on a disk mounted with
// online discard the next journal commit — often the one a create is
// waiting for — pays for discarding them (measured: a commit about twice as
// dear).
//
// The final state, which every task gets, is a line appended to task.json
// rather than a file of its own: each file costs an inode, and allocating
// one is the dearest part of a task's bookkeeping on some file systems
// (ext4 without a journal, shortly after many files were deleted: up to a
// millisecond of CPU, against a few microseconds for the append).
const (
	// deletionFile holds the accepted deletion.
	deletionFile = "deletion.json"
)

// Deletion is an accepted deletion of a task.
type Deletion struct {
	Name        string        `json:"name"`
	At          time.Time     `json:"at"`
	GracePeriod time.Duration `json:"gracePeriod"`
}

// SetFinal records a task's final state at once (from then on it survives
// any process's death) and makes it durable within FlushInterval, in a
// batch with others. A task has one final state: once recorded, later calls
// change nothing.
func (s *Store) SetFinal(name string, state corev1.ContainerState) error {
	b, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("while encoding the final state of task %q: %w", name, err)
	}
	if err := s.reserve.orRelease(func() error { return s.appendFinal(name, b) }); err != nil {
		return err
	}
	s.flusher.add(name)
	return nil
}

// appendFinal appends b to the task's record as a line of its own, unless
// the record has a final state already.
func (s *Store) appendFinal(name string, b []byte) error {
	f, err := beneath.OpenFile(s.dir, filepath.Join(name, RecordFile), os.O_RDWR|os.O_APPEND, 0)
	if s.tampered(name, err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("while writing the final state of task %q: %w", name, classify(err))
	}
	defer f.Close()
	// Reads start at the beginning; O_APPEND moves only the writes.
	cur, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("while writing the final state of task %q: %w", name, classify(err))
	}
	if _, rest, ok := splitRecord(cur); ok {
		if _, done := finalIn(rest); done {
			return nil
		}
	}
	line := make([]byte, 0, len(b)+1)
	if _, err := f.Write(append(append(line, '\n'), b...)); err != nil {
		return fmt.Errorf("while writing the final state of task %q: %w", name, classify(err))
	}
	return nil
}

// splitRecord cuts a task.json into the record (its first JSON value, the
// bytes written at the create) and what was appended after it. It does not
// parse the record; ok is false when b does not start with a whole JSON
// value.
func splitRecord(b []byte) (rec, rest []byte, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, nil, false
	}
	n := dec.InputOffset()
	return b[:n], b[n:], true
}

// finalIn finds the final state in what follows a record: the last line
// that is a whole terminated state. A line cut short by a crash (an append
// never made durable, or bytes a crash zeroed) is as if it were not there,
// and a later append, which starts a line of its own, is read past it.
func finalIn(rest []byte) (corev1.ContainerState, bool) {
	lines := bytes.Split(rest, []byte{'\n'})
	for i := len(lines) - 1; i >= 0; i-- {
		var st corev1.ContainerState
		if json.Unmarshal(lines[i], &st) == nil && st.Terminated != nil {
			return st, true
		}
	}
	return corev1.ContainerState{}, false
}

// MarkDeleted records accepted deletions durably, in parallel.
func (s *Store) MarkDeleted(ds ...Deletion) error {
	names := make([]string, len(ds))
	for i, d := range ds {
		names[i] = d.Name
	}
	return s.reserve.orRelease(func() error {
		if err := s.settle(names); err != nil {
			return err
		}
		return parallel(len(ds), func(i int) error {
			b, err := json.Marshal(ds[i])
			if err != nil {
				return fmt.Errorf("while encoding the deletion of task %q: %w", ds[i].Name, err)
			}
			return s.writeOnce(ds[i].Name, deletionFile, b, true)
		})
	})
}

// UnmarkDeleted takes back deletions recorded by a request that then
// failed.
func (s *Store) UnmarkDeleted(names ...string) error {
	return parallel(len(names), func(i int) error {
		dir := s.Dir(names[i])
		if err := os.Remove(filepath.Join(dir, deletionFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("while taking back the deletion of task %q: %w", names[i], classify(err))
		}
		return syncOne(dir)
	})
}

// settle makes the records of names durable on their own if the create
// log still holds them: a file synced in a task's directory is only as
// durable as the directory, and a task removed while the log holds it
// would come back at the next start.
func (s *Store) settle(names []string) error {
	if s.clog == nil || !s.clog.holds(names) {
		return nil
	}
	return s.clog.checkpoint(s, false)
}

// writeOnce writes a task's file name, unless a valid one exists; durable
// syncs it and its directory before returning.
func (s *Store) writeOnce(task, name string, b []byte, durable bool) error {
	dir := s.Dir(task)
	path := filepath.Join(dir, name)
	rel := filepath.Join(task, name)
	f, err := beneath.OpenFile(s.dir, rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if s.tampered(task, err) {
		return nil
	}
	if errors.Is(err, os.ErrExist) {
		old, rerr := beneath.ReadFile(s.dir, rel)
		switch {
		case rerr == nil && len(old) == 0:
			// Created by a write a crash cut short before it wrote.
			f, err = beneath.OpenFile(s.dir, rel, os.O_WRONLY, 0)
		case rerr == nil && json.Valid(old):
			return nil
		default:
			// Cut short by a crash before it was ever acknowledged: redo.
			_ = os.Remove(path)
			f, err = beneath.OpenFile(s.dir, rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err == nil {
		_, err = f.Write(b)
		if err == nil && durable {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil && durable {
		err = syncOne(dir)
	}
	if err != nil {
		return fmt.Errorf("while writing %s of task %q: %w", name, task, classify(err))
	}
	return nil
}

// Remove deletes a task's directory and everything in it. The directory is
// first renamed out of the way, so a crash half-way through never leaves a
// task that looks alive but has lost files.
func (s *Store) Remove(name string) error {
	if err := s.settle([]string{name}); err != nil {
		return fmt.Errorf("while removing task %q: %w", name, err)
	}
	trash := filepath.Join(s.dir, fmt.Sprintf("%s%s-%d", trashPrefix, name, time.Now().UnixNano()))
	if err := os.Rename(s.Dir(name), trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("while removing task %q: %w", name, classify(err))
	}
	if err := syncOne(s.dir); err != nil {
		return fmt.Errorf("while removing task %q: %w", name, classify(err))
	}
	// A runtime's Remove returns once nothing of the task writes in there
	// any more (the plugin contract), so this removes it all at once.
	if os.RemoveAll(trash) == nil {
		// The space a full disk took from the reserve may be back.
		s.reserve.keep()
		return nil
	}
	// A runtime that breaks that contract, or a shim that outlived its
	// runtime's wait (waiting for disk space to write its last record):
	// the files are gone from the data directory already; they are removed
	// in the background.
	go s.removeLater(trash)
	return nil
}

// How long and how often removeLater tries to remove a task's files.
const (
	removeLaterFor   = time.Minute
	removeRetryDelay = 100 * time.Millisecond
)

// removeLater removes trash, trying for removeLaterFor before leaving it
// to the next start.
func (s *Store) removeLater(trash string) {
	var err error
	for end := time.Now().Add(removeLaterFor); time.Now().Before(end); time.Sleep(removeRetryDelay) {
		if err = os.RemoveAll(trash); err == nil {
			s.reserve.keep()
			return
		}
	}
	s.log.Warn("cannot remove a deleted task's files; will retry at the next start", "path", trash, "error", err)
}

// Load reads every record, in parallel. A directory without a record (a
// create that crashed before it was acknowledged) is removed; one whose
// record cannot be read is moved to .quarantine and logged, and the others
// load normally. Leftovers of interrupted removals are cleaned up.
func (s *Store) Load() ([]Record, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("while reading the data directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, trashPrefix), strings.HasPrefix(name, sparePrefix):
			if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
				s.log.Warn("cannot remove a deleted task's files", "path", name, "error", err)
			}
		case strings.HasPrefix(name, "."):
			// The store's own entries.
		case e.Type()&fs.ModeSymlink != 0:
			// Never followed: it would have the executor read and write
			// wherever it points.
			s.quarantine(name, errors.New("the task's directory is a symbolic link"))
		case !e.IsDir():
			// Files someone else put here.
		default:
			names = append(names, name)
		}
	}
	recs := make([]*Record, len(names))
	_ = parallel(len(names), func(i int) error {
		recs[i] = s.loadOne(names[i])
		return nil
	})
	out := make([]Record, 0, len(names))
	for _, r := range recs {
		if r != nil {
			out = append(out, *r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	// Leftover prepared directories are gone now; prepare fresh ones.
	s.spares.start()
	return out, nil
}

func (s *Store) loadOne(name string) *Record {
	dir := s.Dir(name)
	b, err := beneath.ReadFile(s.dir, filepath.Join(name, RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		s.log.Info("removing the directory of a task whose creation never completed", "task", name)
		if err := os.RemoveAll(dir); err != nil {
			s.log.Warn("cannot remove an incomplete task directory", "task", name, "error", err)
		}
		return nil
	}
	var rec Record
	var rest []byte
	if err == nil {
		var raw []byte
		var ok bool
		if raw, rest, ok = splitRecord(b); !ok {
			raw = b // for json.Unmarshal's account of what is wrong
		}
		err = json.Unmarshal(raw, &rec)
	}
	if err == nil && rec.Name != name {
		err = fmt.Errorf("the record names task %q", rec.Name)
	}
	if err != nil {
		s.quarantine(name, err)
		return nil
	}
	// What does not parse was cut short by a crash before it was
	// acknowledged (a deletion) or made durable (a final state, which the
	// runtime is then asked for again): it is as if it were not there.
	if final, ok := finalIn(rest); ok {
		rec.State = final
	}
	var del Deletion
	if b, err := beneath.ReadFile(s.dir, filepath.Join(name, deletionFile)); err == nil && json.Unmarshal(b, &del) == nil {
		rec.DeletionTimestamp = &del.At
		rec.DeletionGracePeriod = del.GracePeriod
	}
	return &rec
}

// quarantine moves a task directory whose record is unreadable out of the
// way, keeping it for inspection.
func (s *Store) quarantine(name string, cause error) {
	qdir := filepath.Join(s.dir, quarantineDir)
	dst := filepath.Join(qdir, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	err := os.MkdirAll(qdir, 0o700)
	if err == nil {
		err = os.Rename(s.Dir(name), dst)
	}
	if err != nil {
		s.log.Error("cannot read a task's record, nor move it to quarantine; ignoring it", "task", name, "cause", cause, "error", err)
		return
	}
	s.log.Error("cannot read a task's record; moved it to quarantine", "task", name, "cause", cause, "path", dst)
	s.qmu.Lock()
	s.quarantined = append(s.quarantined, dst)
	s.qmu.Unlock()
}

// tampered reports whether err is a task's directory or file found
// replaced by a symbolic link, and says so. What was to be written there
// is not: the link is never followed, and the next start quarantines it.
func (s *Store) tampered(name string, err error) bool {
	if !errors.Is(err, beneath.ErrLink) {
		return false
	}
	s.log.Error("a task's directory or file is a symbolic link; not following it (the next start moves it to quarantine)", "task", name, "error", err)
	return true
}

// Quarantined returns the task directories the last Load moved to
// quarantine, where they are now, and forgets them.
func (s *Store) Quarantined() []string {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	out := s.quarantined
	s.quarantined = nil
	return out
}

// classify wraps an I/O error so callers can tell a full or read-only disk
// (which a client should hear about as such) from anything else.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%w: %w", ErrReadOnly, err)
	}
	return err
}

// parallel runs fn(0..n-1) on a few goroutines and returns the first error.
// fsync latency, not CPU, bounds a batch of writes, so a few more workers
// than cores pay off.
func parallel(n int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	workers := min(n, 4*runtime.NumCPU())
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  int
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return first
}
