// Package store keeps the host's durable record of every task: one
// directory per task under the data directory, holding task.json (the
// host's record) and stdout.log and stderr.log (created empty, for the
// task's runtime to append to), beside whatever else the runtime keeps
// there (shim state).
//
// Every write of task.json is atomic (temporary file, rename); the writes
// that acknowledge something to a client (a task created, a deletion
// accepted) and a task's final state are also fsynced, file and directory,
// before they count as done.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
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
	tmpPrefix     = "." + RecordFile + ".tmp-"
)

// Record is the host's record of a task.
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
}

// ErrExists is returned by Create for a task that already has a record.
var ErrExists = errors.New("task already exists")

// ErrNoSpace wraps write errors caused by a full disk or quota.
var ErrNoSpace = errors.New("no space left for the task store")

// ErrReadOnly wraps write errors caused by a read-only data directory.
var ErrReadOnly = errors.New("the task store is read-only")

// Store is the data directory.
type Store struct {
	dir    string
	log    hclog.Logger
	spares *spares
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
	st := &Store{dir: abs, log: log}
	st.spares = newSpares(abs, log)
	return st, nil
}

// Close stops the store's background work and removes the directories it
// prepared ahead. Records stay.
func (s *Store) Close() { s.spares.close() }

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
	created := make([]string, 0, len(recs))
	var mu sync.Mutex
	err = parallel(len(recs), func(i int) error {
		if err := s.createOne(recs[i]); err != nil {
			return err
		}
		mu.Lock()
		created = append(created, recs[i].Name)
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
		err := parallel(len(recs), func(i int) error {
			return syncPath(filepath.Join(s.Dir(recs[i].Name), RecordFile), s.Dir(recs[i].Name))
		})
		if err == nil {
			err = syncDir(s.dir)
		}
		if err != nil {
			return fmt.Errorf("while making new task records durable: %w", classify(err))
		}
		return nil
	}, nil
}

// createOne writes a new task's record into a prepared directory and
// renames the directory into place: the task appears whole or not at all.
func (s *Store) createOne(rec Record) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("while encoding the record of task %q: %w", rec.Name, err)
	}
	spare, err := s.spares.take()
	if err != nil {
		return fmt.Errorf("while preparing the directory of task %q: %w", rec.Name, classify(err))
	}
	if err := os.WriteFile(filepath.Join(spare, RecordFile), b, 0o600); err != nil {
		_ = os.RemoveAll(spare)
		return fmt.Errorf("while writing the record of task %q: %w", rec.Name, classify(err))
	}
	dir := s.Dir(rec.Name)
	for attempt := 0; ; attempt++ {
		err := unix.Renameat2(unix.AT_FDCWD, spare, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EEXIST) || attempt > 0 {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("while creating the directory of task %q: %w", rec.Name, classify(err))
		}
		if _, err := os.Stat(filepath.Join(dir, RecordFile)); err == nil {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("task %q: %w", rec.Name, ErrExists)
		}
		// A directory without a record is what a create that crashed
		// half-way leaves: it was never acknowledged, so it goes.
		if err := os.RemoveAll(dir); err != nil {
			_ = os.RemoveAll(spare)
			return fmt.Errorf("while removing an incomplete directory of task %q: %w", rec.Name, classify(err))
		}
	}
}

// syncPath fsyncs a file and then its directory.
func syncPath(file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return syncDir(dir)
}

// Put replaces the record of an existing task. With durable it returns only
// once the record is on disk.
func (s *Store) Put(rec Record, durable bool) error {
	return s.write(rec, durable)
}

// PutAll replaces several records durably, in parallel.
func (s *Store) PutAll(recs []Record) error {
	return parallel(len(recs), func(i int) error { return s.write(recs[i], true) })
}

func (s *Store) write(rec Record, durable bool) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("while encoding the record of task %q: %w", rec.Name, err)
	}
	dir := s.Dir(rec.Name)
	f, err := os.CreateTemp(dir, tmpPrefix)
	if err != nil {
		return fmt.Errorf("while writing the record of task %q: %w", rec.Name, classify(err))
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, RecordFile))
	}
	if err == nil && durable {
		err = syncDir(dir)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("while writing the record of task %q: %w", rec.Name, classify(err))
	}
	return nil
}

// Remove deletes a task's directory and everything in it. The directory is
// first renamed out of the way, so a crash half-way through never leaves a
// task that looks alive but has lost files.
func (s *Store) Remove(name string) error {
	trash := filepath.Join(s.dir, fmt.Sprintf("%s%s-%d", trashPrefix, name, time.Now().UnixNano()))
	if err := os.Rename(s.Dir(name), trash); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("while removing task %q: %w", name, classify(err))
	}
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("while removing task %q: %w", name, classify(err))
	}
	if err := os.RemoveAll(trash); err != nil {
		s.log.Warn("cannot remove a deleted task's files; will retry at the next start", "path", trash, "error", err)
	}
	return nil
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
		case strings.HasPrefix(name, "."), !e.IsDir():
			// The store's own entries, and files someone else put here.
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
	if tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*")); len(tmps) > 0 {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, RecordFile))
	if errors.Is(err, os.ErrNotExist) {
		s.log.Info("removing the directory of a task whose creation never completed", "task", name)
		if err := os.RemoveAll(dir); err != nil {
			s.log.Warn("cannot remove an incomplete task directory", "task", name, "error", err)
		}
		return nil
	}
	var rec Record
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err == nil && rec.Name != name {
		err = fmt.Errorf("the record names task %q", rec.Name)
	}
	if err != nil {
		s.quarantine(name, err)
		return nil
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
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
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
