package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// The create log makes a create durable with one write and one fdatasync of
// a file whose blocks were written once, at its creation, instead of with
// fsyncs of the new record, its directory and the data directory: those
// write metadata, and where the file system has no journal each asks the
// disk for a cache flush of its own. On this project's 2-core machines the
// three fsyncs also slowed the task's own start, which runs meanwhile.
//
// The records themselves are synced later, in a batch (a checkpoint, at
// most FlushInterval after the create), and the entries they make
// redundant are dropped from the log. Open replays the entries a crash left:
// a record that is missing or cut short is written again from its entry.
// An entry must never outlive its task's removal, or a restart would bring
// the task back: Remove (and anything that syncs a task's other files)
// checkpoints the task first.
//
// Layout: a header block (magic, generation, offset of the first live
// entry, CRC), then entries (generation, length, CRC, the record's JSON).
// The scan from the first live entry stops at the first entry that is of
// another generation or fails its CRC: a torn write or an older
// generation's leftover. An entry acknowledged to a client is never behind
// such a one, since entries are written in order and each fdatasync covers
// every write before it.
const (
	// logName is the create log's file in the data directory. Task names
	// cannot start with a dot, so it never collides with a task.
	logName = ".create.log"
	// logHeaderSize is the header's block; only its first bytes are used,
	// within one sector, so that the disk writes it whole or not at all.
	logHeaderSize = 512
	logMagic      = "TXCLOG01"
	// entryHeaderSize: generation (8), length (4), CRC (4).
	entryHeaderSize = 16
)

// logSize is the log's capacity: about 5,000 records of 400 bytes. A batch
// that does not fit in an empty log is synced the old way. Tests shrink it.
var logSize int64 = 2 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var (
	// errLogTooSmall is returned by append for a batch larger than the log.
	errLogTooSmall = errors.New("the batch does not fit in the create log")
	errLogClosed   = errors.New("the store is closed")
)

// createLog is the data directory's create log.
type createLog struct {
	// path is the log's file. It is opened for each use, not held: a
	// file open for writing keeps the data directory from being remounted
	// read-only.
	path string
	log  hclog.Logger

	// ckMu serializes checkpoints; it is taken before mu.
	ckMu sync.Mutex

	mu     sync.Mutex
	closed bool
	gen    uint64
	// start is the offset of the first live entry, off the end of the last.
	start, off int64
	// live maps each task with a live entry to the end of that entry.
	live map[string]int64
}

// logEntry is an entry found by openLog.
type logEntry struct {
	name    string
	payload []byte
}

// openLog opens the create log of dir, creating it if there is none, and
// returns the live entries a previous run left.
func openLog(dir string, log hclog.Logger) (*createLog, []logEntry, error) {
	path := filepath.Join(dir, logName)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		l, err := newLog(dir, log)
		return l, nil, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("while reading the create log: %w", classify(err))
	}
	gen, start, ok := parseLogHeader(b)
	if !ok || int64(len(b)) != logSize {
		// Not a log this version wrote whole: nothing in it can be
		// trusted, and a log cannot have been acknowledged with a torn
		// header (the header is written within one sector).
		log.Error("the create log is damaged; starting a new one", "path", path, "size", len(b))
		l, err := newLog(dir, log)
		return l, nil, err
	}
	l := &createLog{path: path, log: log, gen: gen, start: start, off: start, live: map[string]int64{}}
	var entries []logEntry
	for {
		payload, next, ok := parseEntry(b, l.off, gen)
		if !ok {
			break
		}
		var rec struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(payload, &rec); err != nil || !validName(rec.Name) {
			// The CRC held, so this version did not write it.
			log.Error("ignoring a create log entry without a task name", "offset", l.off)
		} else {
			entries = append(entries, logEntry{name: rec.Name, payload: payload})
			l.live[rec.Name] = next
		}
		l.off = next
	}
	return l, entries, nil
}

// newLog writes an empty log in full, so that later writes change no
// metadata (an fdatasync then flushes only data), and syncs it into place.
func newLog(dir string, log hclog.Logger) (*createLog, error) {
	b := make([]byte, logSize)
	putLogHeader(b, 1, logHeaderSize)
	if err := replaceFile(dir, logName, b); err != nil {
		return nil, fmt.Errorf("while creating the create log: %w", classify(err))
	}
	return &createLog{path: filepath.Join(dir, logName), log: log, gen: 1, start: logHeaderSize, off: logHeaderSize, live: map[string]int64{}}, nil
}

func putLogHeader(b []byte, gen uint64, start int64) {
	copy(b, logMagic)
	binary.LittleEndian.PutUint64(b[8:], gen)
	binary.LittleEndian.PutUint64(b[16:], uint64(start))
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagnoli))
}

func parseLogHeader(b []byte) (gen uint64, start int64, ok bool) {
	if len(b) < logHeaderSize || string(b[:8]) != logMagic ||
		binary.LittleEndian.Uint32(b[24:]) != crc32.Checksum(b[:24], castagnoli) {
		return 0, 0, false
	}
	gen = binary.LittleEndian.Uint64(b[8:])
	start = int64(binary.LittleEndian.Uint64(b[16:]))
	if start < logHeaderSize || start > int64(len(b)) {
		return 0, 0, false
	}
	return gen, start, true
}

func putEntry(b []byte, gen uint64, payload []byte) []byte {
	var h [entryHeaderSize]byte
	binary.LittleEndian.PutUint64(h[0:], gen)
	binary.LittleEndian.PutUint32(h[8:], uint32(len(payload)))
	crc := crc32.Update(crc32.Checksum(h[:12], castagnoli), castagnoli, payload)
	binary.LittleEndian.PutUint32(h[12:], crc)
	return append(append(b, h[:]...), payload...)
}

// parseEntry reads the entry at off if it is a whole entry of generation
// gen.
func parseEntry(b []byte, off int64, gen uint64) (payload []byte, next int64, ok bool) {
	if off+entryHeaderSize > int64(len(b)) {
		return nil, 0, false
	}
	h := b[off : off+entryHeaderSize]
	n := int64(binary.LittleEndian.Uint32(h[8:]))
	if binary.LittleEndian.Uint64(h[0:]) != gen || n == 0 || off+entryHeaderSize+n > int64(len(b)) {
		return nil, 0, false
	}
	payload = b[off+entryHeaderSize : off+entryHeaderSize+n]
	if crc32.Update(crc32.Checksum(h[:12], castagnoli), castagnoli, payload) != binary.LittleEndian.Uint32(h[12:]) {
		return nil, 0, false
	}
	return payload, off + entryHeaderSize + n, true
}

// validName tells whether a name from the log can be a task's directory.
func validName(name string) bool {
	return name != "" && !strings.HasPrefix(name, ".") && !strings.ContainsAny(name, "/\x00")
}

// append writes the records' entries and makes them durable. The records'
// files must be written already: a checkpoint may sync them at any time
// after this takes the lock.
func (l *createLog) append(s *Store, names []string, payloads [][]byte) error {
	n := 0
	for _, p := range payloads {
		n += entryHeaderSize + len(p)
	}
	if logHeaderSize+int64(n) > logSize {
		return errLogTooSmall
	}
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("while opening the create log: %w", classify(err))
	}
	defer f.Close()
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return errLogClosed
		}
		if l.off+int64(n) <= logSize {
			break
		}
		l.mu.Unlock()
		// Full: empty it. Creates wait meanwhile, as they would for a
		// full journal.
		if err := l.checkpoint(s, true); err != nil {
			return err
		}
	}
	buf := make([]byte, 0, n)
	for _, p := range payloads {
		buf = putEntry(buf, l.gen, p)
	}
	_, err = f.WriteAt(buf, l.off)
	if err == nil {
		for _, name := range names {
			l.live[name] = l.off + int64(n)
		}
		l.off += int64(n)
	}
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("while writing the create log: %w", classify(err))
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("while syncing the create log: %w", classify(err))
	}
	return nil
}

// holds tells whether any of names has a live entry.
func (l *createLog) holds(names []string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, name := range names {
		if _, ok := l.live[name]; ok {
			return true
		}
	}
	return false
}

// checkpoint syncs the records of the live entries, their directories and
// the data directory, then drops those entries: from then on the records
// stand on their own. Creates go on meanwhile unless exclusive, which a
// full log needs to start over from its beginning. The paths in also are
// synced in the same batch (one merged cache flush), as syncLoosely does.
func (l *createLog) checkpoint(s *Store, exclusive bool, also ...string) error {
	l.ckMu.Lock()
	defer l.ckMu.Unlock()
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("while opening the create log: %w", classify(err))
	}
	defer f.Close()
	l.mu.Lock()
	upTo := l.off
	if l.closed || len(l.live) == 0 && upTo == l.start {
		l.mu.Unlock()
		s.syncLoosely(also)
		return nil
	}
	paths := make([]string, 0, 2*len(l.live)+1+len(also))
	for name := range l.live {
		paths = append(paths, filepath.Join(s.Dir(name), RecordFile), s.Dir(name))
	}
	paths = append(paths, s.dir)
	if !exclusive {
		l.mu.Unlock()
	}
	strict := len(paths)
	if len(also) > 0 {
		seen := make(map[string]bool, strict)
		for _, p := range paths {
			seen[p] = true
		}
		for _, p := range also {
			if !seen[p] {
				paths = append(paths, p)
			}
		}
	}
	err = parallel(len(paths), func(i int) error {
		err := syncOne(paths[i])
		switch {
		case err == nil:
		case i >= strict:
			s.log.Debug("cannot sync a task's file", "path", paths[i], "error", err)
		case !errors.Is(err, os.ErrNotExist):
			return err
		}
		// Remove settles a task before it goes, so a record that is not
		// there was removed by hand: it must not hold up the others.
		return nil
	})
	testHookCheckpointSynced()
	if !exclusive {
		l.mu.Lock()
	}
	if err != nil {
		l.mu.Unlock()
		return fmt.Errorf("while making new task records durable: %w", classify(err))
	}
	gen, start := l.gen, upTo
	if l.off == upTo {
		// Nothing came in meanwhile: start over at the beginning, with a
		// new generation so that the entries there no longer count.
		gen, start = l.gen+1, logHeaderSize
	}
	hdr := make([]byte, logHeaderSize)
	putLogHeader(hdr, gen, start)
	if _, err = f.WriteAt(hdr, 0); err == nil {
		if gen != l.gen {
			l.off = start
		}
		l.gen, l.start = gen, start
		for name, end := range l.live {
			if end <= upTo {
				delete(l.live, name)
			}
		}
	}
	l.mu.Unlock()
	// Synced before returning, so that a caller about to remove a task
	// knows no restart will replay its entry.
	if err == nil {
		err = unix.Fdatasync(int(f.Fd()))
	}
	if err != nil {
		return fmt.Errorf("while writing the create log's header: %w", classify(err))
	}
	return nil
}

// testHookCheckpointSynced lets tests create tasks while a checkpoint
// syncs.
var testHookCheckpointSynced = func() {}

// replay writes again the records a crash lost (or cut short) of the live
// entries, then checkpoints: afterwards the store is as if every
// acknowledged create had synced its record itself.
func (l *createLog) replay(s *Store, entries []logEntry) error {
	if len(entries) == 0 {
		return nil
	}
	// A task's removal checkpoints its entry first, so a name has one
	// live entry; should there be more, the last is the newest.
	last := map[string][]byte{}
	for _, e := range entries {
		last[e.name] = e.payload
	}
	for name, payload := range last {
		if err := s.restore(name, payload); err != nil {
			return err
		}
	}
	return l.checkpoint(s, false)
}

// close stops the log's use; a checkpoint under way finishes first.
func (l *createLog) close() {
	l.ckMu.Lock()
	defer l.ckMu.Unlock()
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

// restore makes payload the record of task name, unless it is already.
func (s *Store) restore(name string, payload []byte) error {
	dir := s.Dir(name)
	path := filepath.Join(dir, RecordFile)
	old, err := os.ReadFile(path)
	rec, _, whole := splitRecord(old)
	if err == nil && whole && bytes.Equal(rec, payload) {
		return nil // perhaps with its final state after it
	}
	if err == nil && whole {
		// Whole, yet not this task's record: a task of the same name
		// whose removal a crash undid. The log's entry is newer.
		trash := filepath.Join(s.dir, fmt.Sprintf("%s%s-%d", trashPrefix, name, time.Now().UnixNano()))
		if err := os.Rename(dir, trash); err != nil {
			return fmt.Errorf("while replacing an older directory of task %q: %w", name, classify(err))
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("while restoring the directory of task %q: %w", name, classify(err))
	}
	if err := os.WriteFile(path, payload, 0o600); err != nil {
		return fmt.Errorf("while restoring the record of task %q: %w", name, classify(err))
	}
	s.log.Warn("restored a task's record from the create log", "task", name)
	return nil
}
