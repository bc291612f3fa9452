package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

func record(name string) Record {
	return Record{
		Name: name, Runtime: "process", CreatedAt: time.Now(),
		Spec:  sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}},
		State: sdk.Waiting(sdk.ReasonInitialized, ""),
	}
}

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func create(t *testing.T, s *Store, recs ...Record) {
	t.Helper()
	commit, err := s.Create(recs...)
	if err == nil {
		err = commit()
	}
	if err != nil {
		t.Fatal(err)
	}
}

func names(recs []Record) string {
	var n []string
	for _, r := range recs {
		n = append(n, r.Name)
	}
	return strings.Join(n, ",")
}

func TestCreatePutRemoveLoad(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	create(t, s, record("b"), record("a"))
	for _, f := range []string{RecordFile} {
		if _, err := os.Stat(filepath.Join(dir, "a", f)); err != nil {
			t.Fatalf("a new task directory lacks %s: %v", f, err)
		}
	}
	if _, err := s.Create(record("a")); !errors.Is(err, ErrExists) {
		t.Fatalf("creating an existing task: %v, want ErrExists", err)
	}
	if err := s.SetFinal("b", sdk.Terminated(3, 0, "", "", time.Now(), time.Now())); err != nil {
		t.Fatal(err)
	}
	// Final states never change.
	if err := s.SetFinal("b", sdk.Terminated(4, 0, "", "", time.Now(), time.Now())); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := s.MarkDeleted(Deletion{Name: "b", At: at, GracePeriod: time.Second}); err != nil {
		t.Fatal(err)
	}
	s.Close() // flushes the final state
	if err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}
	recs, err := open(t, dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	if names(recs) != "b" || recs[0].State.Terminated == nil || recs[0].State.Terminated.ExitCode != 3 {
		t.Fatalf("loaded %+v, want b terminated with 3", recs)
	}
	if d := recs[0].DeletionTimestamp; d == nil || !d.Equal(at) || recs[0].DeletionGracePeriod != time.Second {
		t.Fatalf("loaded deletion %v %v, want %v 1s", d, recs[0].DeletionGracePeriod, at)
	}
	if _, err := os.Stat(filepath.Join(dir, "a")); !os.IsNotExist(err) {
		t.Fatalf("a removed task's directory is still there: %v", err)
	}
}

// TestLoadCleansUp: what crashes leave behind is put right at the next
// start, and one bad record costs only that task.
func TestLoadCleansUp(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	create(t, s, record("good"), record("corrupt"), record("misnamed"))
	// Damage done after the create log has let go of the records: nothing
	// can restore them.
	s.Close()
	if err := os.WriteFile(filepath.Join(dir, "corrupt", RecordFile), []byte(`{"name":"corr`), 0o600); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "misnamed", RecordFile))
	if err := os.WriteFile(filepath.Join(dir, "misnamed", RecordFile), []byte(strings.Replace(string(b), `"misnamed"`, `"someone-else"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"half-created", ".trash-x-1", ".spare-7"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// A final state and a deletion cut short by a crash count as absent.
	appendTo(t, filepath.Join(dir, "good", RecordFile), "\n{\"termin")
	if err := os.WriteFile(filepath.Join(dir, "good", deletionFile), []byte(`{"termin`), 0o600); err != nil {
		t.Fatal(err)
	}

	recs, err := open(t, dir).Load()
	if err != nil {
		t.Fatal(err)
	}
	if names(recs) != "good" || recs[0].State.Waiting == nil || recs[0].DeletionTimestamp != nil {
		t.Fatalf("loaded %+v, want only good, waiting, not deleted", recs)
	}
	for _, gone := range []string{"half-created", ".trash-x-1", ".spare-7", "corrupt", "misnamed"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s survived the load: %v", gone, err)
		}
	}
	q, _ := os.ReadDir(filepath.Join(dir, quarantineDir))
	if len(q) != 2 {
		t.Fatalf("quarantine holds %d entries, want the 2 bad records", len(q))
	}
}

func TestCreateReplacesAnIncompleteDirectory(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	// A create that crashed before its record was written.
	if err := os.MkdirAll(filepath.Join(dir, "again", "junk"), 0o700); err != nil {
		t.Fatal(err)
	}
	create(t, s, record("again"))
	if _, err := os.Stat(filepath.Join(dir, "again", "junk")); !os.IsNotExist(err) {
		t.Fatal("the incomplete directory's content survived")
	}
	if _, err := os.Stat(filepath.Join(dir, "again", RecordFile)); err != nil {
		t.Fatal(err)
	}
}

func TestFailedBatchLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	create(t, s, record("taken"))
	if _, err := s.Create(record("fresh-1"), record("taken"), record("fresh-2")); !errors.Is(err, ErrExists) {
		t.Fatalf("got %v, want ErrExists", err)
	}
	for _, n := range []string{"fresh-1", "fresh-2"} {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s was left behind by a failed batch", n)
		}
	}
}

// BenchmarkCreate: one task's record written and made durable, as a create
// does before it answers.
func BenchmarkCreate(b *testing.B) {
	s := open(b, b.TempDir())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		commit, err := s.Create(record(fmt.Sprintf("bench-%d", i)))
		if err == nil {
			err = commit()
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSetFinal: a task's final state written (made durable later, in
// a batch).
func BenchmarkSetFinal(b *testing.B) {
	s := open(b, b.TempDir())
	recs := make([]Record, b.N)
	for i := range recs {
		recs[i] = record(fmt.Sprintf("bench-%d", i))
	}
	commit, err := s.Create(recs...)
	if err == nil {
		err = commit()
	}
	if err != nil {
		b.Fatal(err)
	}
	state := sdk.Terminated(0, 0, "", "", time.Now(), time.Now())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.SetFinal(recs[i].Name, state); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPrivateModes: task specs and output are readable by the host's user
// only, whatever the umask.
func TestPrivateModes(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	cases := []struct {
		name    string
		prepare func(dir string) // before Open
	}{
		{"new data directory", func(string) {}},
		{"existing open data directory", func(dir string) {
			if err := os.MkdirAll(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			c.prepare(dir)
			s := open(t, dir)
			create(t, s, record("a"))
			if err := s.SetFinal("a", sdk.Terminated(0, 0, "", "", time.Now(), time.Now())); err != nil {
				t.Fatal(err)
			}
			if err := s.MarkDeleted(Deletion{Name: "a", At: time.Now()}); err != nil {
				t.Fatal(err)
			}
			want := map[string]os.FileMode{
				dir:                                   0o700,
				filepath.Join(dir, "a"):               0o700,
				filepath.Join(dir, "a", RecordFile):   0o600,
				filepath.Join(dir, "a", deletionFile): 0o600,
			}
			for p, m := range want {
				fi, err := os.Stat(p)
				if err != nil {
					t.Fatal(err)
				}
				if got := fi.Mode().Perm(); got != m {
					t.Errorf("%s: mode %04o, want %04o", p, got, m)
				}
			}
		})
	}
}

// recordSyncs replaces syncFile for the test and returns what was synced
// so far.
func recordSyncs(t *testing.T) (synced func() []string, reset func()) {
	var mu sync.Mutex
	var names []string
	syncFile = func(f *os.File) error {
		mu.Lock()
		names = append(names, f.Name())
		mu.Unlock()
		return f.Sync()
	}
	t.Cleanup(func() { syncFile = (*os.File).Sync })
	return func() []string {
			mu.Lock()
			defer mu.Unlock()
			return append([]string(nil), names...)
		}, func() {
			mu.Lock()
			names = nil
			mu.Unlock()
		}
}

// TestRecordsAreSyncedOnTheirOwn: within a flush interval of a create
// (which the create log made durable), the checkpoint syncs its record, the
// task's directory and the data directory (the entry of the task's
// directory); a batch too large for the log syncs them before the commit
// returns.
func TestRecordsAreSyncedOnTheirOwn(t *testing.T) {
	for _, c := range []struct {
		name    string
		logSize int64
		atOnce  bool
	}{
		{"through the log", logSize, false},
		{"too large for the log", logHeaderSize + 64, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			defer func(n int64) { logSize = n }(logSize)
			logSize = c.logSize
			synced, _ := recordSyncs(t)
			dir := t.TempDir()
			s := open(t, dir)
			create(t, s, record("a"), record("b"))
			want := []string{
				filepath.Join(dir, "a", RecordFile), filepath.Join(dir, "a"),
				filepath.Join(dir, "b", RecordFile), filepath.Join(dir, "b"),
				dir,
			}
			if got := synced(); c.atOnce != slices.Contains(got, want[0]) {
				t.Errorf("when the commit returned, the store had synced %q", got)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				got := synced()
				missing := slices.DeleteFunc(slices.Clone(want), func(p string) bool { return slices.Contains(got, p) })
				if len(missing) == 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("within 5s of the create the store synced %q, not %q", got, missing)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestFlushSyncsTheFinalState: the batch flush makes the final state
// durable: the record it was appended to, not some other file of the task.
func TestFlushSyncsTheFinalState(t *testing.T) {
	synced, reset := recordSyncs(t)
	dir := t.TempDir()
	s := open(t, dir)
	create(t, s, record("a"))
	reset()
	if err := s.SetFinal("a", sdk.Terminated(0, 0, "", "", time.Now(), time.Now())); err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(dir, "a", RecordFile)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := synced()
		if slices.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 5s of SetFinal the store synced %q, not all of %q", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFinalStateAppended: the final state is appended to the task's
// record, so no file is created when a task ends; a second one changes
// nothing; one a crash cut short, or zeroed, is read past, by Load and by
// the next SetFinal alike, and the record before it stays readable.
func TestFinalStateAppended(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage string // appended to the record before SetFinal, as a crash leaves it
		want   int32  // the exit code loaded
	}{
		{"clean", "", 3},
		{"after a torn final state", "\n{\"terminated\":{\"exitCo", 3},
		{"after zeroed bytes", "\x00\x00\x00\x00", 3},
		{"after an earlier final state", "\n{\"terminated\":{\"exitCode\":9}}", 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir)
			create(t, s, record("a"))
			path := filepath.Join(dir, "a", RecordFile)
			appendTo(t, path, c.damage)
			before, err := os.ReadDir(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			for _, code := range []int32{3, 4} {
				if err := s.SetFinal("a", sdk.Terminated(code, 0, "", "", time.Now(), time.Now())); err != nil {
					t.Fatal(err)
				}
			}
			after, err := os.ReadDir(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			if len(after) != len(before) {
				t.Fatalf("the task's directory held %v, then %v: the final state made a file", before, after)
			}
			recs, err := open(t, dir).Load()
			if err != nil || len(recs) != 1 || recs[0].State.Terminated == nil || recs[0].State.Terminated.ExitCode != c.want {
				t.Fatalf("loaded %+v, %v; want a terminated with code %d", recs, err, c.want)
			}
		})
	}
}

// appendTo appends s to the file at path.
func appendTo(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}
