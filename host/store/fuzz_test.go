package store

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// FuzzLoad: whatever a task's files hold (a disk fault, a crash, someone's
// editor), Load does not panic, keeps every other task as it was, and
// either loads that task under its own name or moves it to quarantine and
// says so.
func FuzzLoad(f *testing.F) {
	valid := func(v any) []byte { b, _ := json.Marshal(v); return b }
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	rec := Record{Name: "fuzzed", Runtime: "process", CreatedAt: now,
		Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}}}
	final := valid(sdk.Terminated(3, 0, "", "", now, now))
	deletion := valid(Deletion{Name: "fuzzed", At: now, GracePeriod: time.Second})
	// present: which are written (bits 0, 1, 2): task.json, the final
	// state (appended to task.json as a line; without a task.json, alone
	// in a file the store does not know), deletion.json.
	f.Add(uint8(7), valid(rec), final, deletion)
	f.Add(uint8(1), valid(rec), []byte{}, []byte{})
	f.Add(uint8(7), valid(rec)[:10], final, deletion)
	f.Add(uint8(7), valid(rec), final[:5], deletion[:5])
	f.Add(uint8(3), valid(rec), []byte(`{"terminated":"x"}`), []byte{})
	f.Add(uint8(5), valid(rec), []byte{}, []byte(`{"at":"not a time"}`))
	f.Add(uint8(1), []byte(`{"name":"good"}`), []byte{}, []byte{})
	f.Add(uint8(1), []byte(`{"name":"fuzzed","createdAt":"x"}`), []byte{}, []byte{})
	f.Add(uint8(1), []byte(`null`), []byte{}, []byte{})
	f.Add(uint8(1), []byte(`{"name":"fuzzed","spec":{"process":null,"container":{"image":1}}}`), []byte{}, []byte{})
	f.Add(uint8(6), []byte{}, final, deletion)
	f.Add(uint8(1), []byte{0xff, 0xfe, 0x00}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, present uint8, task, finalState, del []byte) {
		dir := t.TempDir()
		good := Record{Name: "good", Runtime: "process", CreatedAt: now,
			Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sleep", "1"}}}}
		goodFinal := sdk.Terminated(7, 0, "Failed", "", now, now)
		fuzzed := filepath.Join(dir, "fuzzed")
		for _, d := range []string{filepath.Join(dir, "good"), fuzzed} {
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		writes := map[string][]byte{
			filepath.Join(dir, "good", RecordFile): append(append(valid(good), '\n'), valid(goodFinal)...),
		}
		switch present & 3 {
		case 1:
			writes[filepath.Join(fuzzed, RecordFile)] = task
		case 2:
			writes[filepath.Join(fuzzed, "final.json")] = finalState
		case 3:
			writes[filepath.Join(fuzzed, RecordFile)] = append(append(bytes.Clone(task), '\n'), finalState...)
		}
		if present&4 != 0 {
			writes[filepath.Join(fuzzed, deletionFile)] = del
		}
		for p, b := range writes {
			if err := os.WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}

		var logs bytes.Buffer
		s, err := Open(dir, hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true}))
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.Load()
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]Record{}
		for _, r := range recs {
			if _, twice := byName[r.Name]; twice {
				t.Fatalf("task %q loaded twice", r.Name)
			}
			byName[r.Name] = r
		}
		if g, ok := byName["good"]; !ok || g.State.Terminated == nil || g.State.Terminated.ExitCode != 7 || g.DeletionTimestamp != nil {
			t.Fatalf("the intact task was not kept as it was: %+v (loaded: %v)", g, ok)
		}
		if len(byName) > 2 {
			t.Fatalf("loaded %d tasks from two directories", len(byName))
		}
		r, loaded := byName["fuzzed"]
		_, statErr := os.Stat(fuzzed)
		quarantined, _ := filepath.Glob(filepath.Join(dir, quarantineDir, "fuzzed-*", RecordFile))
		switch {
		case present&1 == 0:
			// A directory without a record is a create that never
			// completed: it goes, and is no one's to keep.
			if loaded || !os.IsNotExist(statErr) || len(quarantined) != 0 {
				t.Fatalf("a directory without a record: loaded %v, stat %v, quarantined %v", loaded, statErr, quarantined)
			}
		case loaded:
			if r.Name != "fuzzed" || statErr != nil || len(quarantined) != 0 {
				t.Fatalf("loaded as %q; directory: %v; quarantined: %v", r.Name, statErr, quarantined)
			}
			// A final state of one line, last in the file, is the one.
			var want corev1.ContainerState
			if json.Unmarshal(finalState, &want) == nil && want.Terminated != nil && present&2 != 0 && !bytes.ContainsRune(finalState, '\n') {
				if got, _ := json.Marshal(r.State); string(got) != string(valid(want)) {
					t.Fatalf("the final state on disk is %s, loaded %s", valid(want), got)
				}
			}
		default:
			if !os.IsNotExist(statErr) || len(quarantined) != 1 {
				t.Fatalf("an unreadable record was not moved to quarantine: stat %v, quarantined %v", statErr, quarantined)
			}
			if !bytes.Contains(logs.Bytes(), []byte(`moved it to quarantine`)) || !bytes.Contains(logs.Bytes(), []byte(`"task":"fuzzed"`)) {
				t.Fatalf("the quarantine was not logged: %s", logs.Bytes())
			}
		}
	})
}
