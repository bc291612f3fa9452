package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// crash stops s the way a killed host stops: whatever it has not synced by
// now, it never will.
func crash(t *testing.T, s *Store) {
	t.Helper()
	hold(s)
	s.clog.close()
}

// hold stops s's flusher, so that only the test checkpoints the log: on a
// slow disk, creates can take longer than FlushInterval and a flush would
// make durable what a test means to lose. Right after Open, no flush is
// armed or running.
func hold(s *Store) {
	s.flusher.mu.Lock()
	s.flusher.closed = true
	if s.flusher.timer != nil {
		s.flusher.timer.Stop()
	}
	s.flusher.mu.Unlock()
}

// openHeld opens dir with its flusher held.
func openHeld(t *testing.T, dir string) *Store {
	t.Helper()
	s := open(t, dir)
	hold(s)
	return s
}

// lose undoes what a power cut can undo of records never synced: the
// whole directory, or the record's content.
func lose(t *testing.T, dir, name, how string) {
	t.Helper()
	var err error
	switch how {
	case "directory":
		err = os.RemoveAll(filepath.Join(dir, name))
	case "content":
		err = os.WriteFile(filepath.Join(dir, name, RecordFile), nil, 0o600)
	case "torn":
		err = os.WriteFile(filepath.Join(dir, name, RecordFile), []byte(`{"name":"`+name+`","sp`), 0o600)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func readRecord(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name, RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCreateLogRestoresLostRecords: a create acknowledged through the log
// survives the loss of its record, however much of it was lost; a record
// that survived whole keeps the final state appended to it.
func TestCreateLogRestoresLostRecords(t *testing.T) {
	dir := t.TempDir()
	s := openHeld(t, dir)
	create(t, s, record("whole"), record("gone"))
	create(t, s, record("empty"))
	create(t, s, record("torn"))
	create(t, s, record("ended"))
	if err := s.SetFinal("ended", sdk.Terminated(4, 0, "", "", time.Now(), time.Now())); err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, n := range []string{"whole", "gone", "empty", "torn", "ended"} {
		want[n] = readRecord(t, dir, n)
	}
	crash(t, s)
	lose(t, dir, "gone", "directory")
	lose(t, dir, "empty", "content")
	lose(t, dir, "torn", "torn")

	s2 := open(t, dir)
	recs, err := s2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(recs); got != "empty,ended,gone,torn,whole" {
		t.Fatalf("loaded %s, want every acknowledged task", got)
	}
	if st := recs[1].State.Terminated; st == nil || st.ExitCode != 4 {
		t.Errorf("the task that ended has %+v, want its final state", recs[1].State)
	}
	for n, b := range want {
		if got := readRecord(t, dir, n); !bytes.Equal(got, b) {
			t.Errorf("%s's record is %s, want %s", n, got, b)
		}
	}
	// Restored and checkpointed: the log holds nothing any more.
	if s2.clog.pending() || s2.clog.off != logHeaderSize {
		t.Errorf("after the replay the log holds %d tasks up to offset %d", len(s2.clog.live), s2.clog.off)
	}
}

// TestCreateLogForgetsWhatIsDurable: a removed task does not come back from
// the log, nor does one whose record was synced by a checkpoint; an entry
// torn by the crash (never acknowledged) restores nothing.
func TestCreateLogForgetsWhatIsDurable(t *testing.T) {
	dir := t.TempDir()
	s := openHeld(t, dir)
	create(t, s, record("checkpointed"))
	if err := s.clog.checkpoint(s, false); err != nil {
		t.Fatal(err)
	}
	create(t, s, record("removed"))
	if err := s.Remove("removed"); err != nil {
		t.Fatal(err)
	}
	create(t, s, record("logged"))
	create(t, s, record("torn-entry"))
	crash(t, s)
	// The last entry loses its last byte.
	f, err := os.OpenFile(filepath.Join(dir, logName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	end := s.clog.off - 1
	if _, err := f.ReadAt(b[:], end); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b[:], end); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, n := range []string{"checkpointed", "logged", "torn-entry"} {
		lose(t, dir, n, "directory")
	}

	recs, err := open(t, dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	if got := names(recs); got != "logged" {
		t.Fatalf("loaded %q, want only the task whose entry is live and whole", got)
	}
}

// TestCheckpointWhileCreating: entries written while a checkpoint syncs
// stay live (the checkpoint moves the log's start past its own), and a
// full log starts over once everything in it is synced.
func TestCheckpointWhileCreating(t *testing.T) {
	t.Run("during a checkpoint", func(t *testing.T) {
		dir := t.TempDir()
		s := openHeld(t, dir)
		create(t, s, record("before"))
		once := false
		testHookCheckpointSynced = func() {
			if !once {
				once = true
				create(t, s, record("during"))
			}
		}
		defer func() { testHookCheckpointSynced = func() {} }()
		if err := s.clog.checkpoint(s, false); err != nil {
			t.Fatal(err)
		}
		if s.clog.start == logHeaderSize || !s.clog.holds([]string{"during"}) || s.clog.holds([]string{"before"}) {
			t.Fatalf("after the checkpoint the log starts at %d and holds %v", s.clog.start, s.clog.live)
		}
		crash(t, s)
		lose(t, dir, "before", "directory")
		lose(t, dir, "during", "directory")
		recs, err := open(t, dir).Load()
		if err != nil {
			t.Fatal(err)
		}
		if got := names(recs); got != "during" {
			t.Fatalf("loaded %q, want the task created during the checkpoint", got)
		}
	})
	t.Run("a full log", func(t *testing.T) {
		defer func(n int64) { logSize = n }(logSize)
		logSize = 4096
		dir := t.TempDir()
		s := openHeld(t, dir)
		for i := range 40 {
			create(t, s, record(fmt.Sprintf("t%02d", i)))
		}
		s.clog.mu.Lock()
		live := len(s.clog.live)
		s.clog.mu.Unlock()
		if live == 0 || live >= 40 {
			t.Fatalf("the log holds %d of 40 tasks; want it to have started over", live)
		}
		crash(t, s)
		for i := range 40 {
			lose(t, dir, fmt.Sprintf("t%02d", i), "directory")
		}
		recs, err := open(t, dir).Load()
		if err != nil {
			t.Fatal(err)
		}
		// Only the tasks since the log started over had a live entry; the
		// others were synced on their own (and are lost here only because
		// the test removed them).
		if len(recs) != live || recs[len(recs)-1].Name != "t39" {
			t.Fatalf("loaded %s, want the last %d", names(recs), live)
		}
	})
}

// TestDamagedLog: a log whose header does not check out is replaced, and
// the store opens.
func TestDamagedLog(t *testing.T) {
	dir := t.TempDir()
	s := openHeld(t, dir)
	create(t, s, record("a"))
	crash(t, s)
	if err := os.WriteFile(filepath.Join(dir, logName), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if fi, err := os.Stat(filepath.Join(dir, logName)); err != nil || fi.Size() != logSize {
		t.Fatalf("the log was not replaced: %v %v", fi, err)
	}
	recs, err := s2.Load()
	if err != nil || names(recs) != "a" {
		t.Fatalf("loaded %v %v", names(recs), err)
	}
}

// TestDeletionSettlesTheTask: a deletion is synced in the task's directory,
// which is only as durable as the directory's own entry: recording one
// takes the task out of the log first.
func TestDeletionSettlesTheTask(t *testing.T) {
	synced, _ := recordSyncs(t)
	dir := t.TempDir()
	s := openHeld(t, dir)
	create(t, s, record("a"), record("b"))
	if err := s.MarkDeleted(Deletion{Name: "a", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if s.clog.holds([]string{"a"}) {
		t.Fatal("the log still holds a task whose deletion was recorded")
	}
	for _, p := range []string{filepath.Join(dir, "a", RecordFile), dir} {
		if !slices.Contains(synced(), p) {
			t.Errorf("recording the deletion did not sync %s", p)
		}
	}
}

// pending tells whether the log has live entries.
func (l *createLog) pending() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.live) > 0
}
