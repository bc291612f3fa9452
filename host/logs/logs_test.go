package logs

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/logs/logstest"
	"github.com/opensandbox/task-executor/sdk"
)

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// taskDir makes a task's directory holding files.
func taskDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "task")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		writeFile(t, dir, name, content)
	}
	return dir
}

// all is every line of both streams.
var all = Options{Stdout: true, Stderr: true, TailLines: NoLimit, LimitBytes: NoLimit}

// with returns all with changes.
func with(change func(*Options)) Options {
	o := all
	change(&o)
	return o
}

func stdoutOnly(o *Options) { o.Stderr = false }

func stderrOnly(o *Options) { o.Stdout = false }

func tail(n int) func(*Options) { return func(o *Options) { o.TailLines = n } }

func limit(n int64) func(*Options) { return func(o *Options) { o.LimitBytes = n } }

func snapshot(t *testing.T, dir string, opts Options) string {
	t.Helper()
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var b bytes.Buffer
	if err := r.Copy(context.Background(), &b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestSnapshot(t *testing.T) {
	plain := map[string]string{sdk.StdoutLog: "a\nb\nc\n", sdk.StderrLog: "x\ny"}
	cri := map[string]string{
		// Empty plain files are there too: the container log wins.
		sdk.StdoutLog: "",
		sdk.StderrLog: "",
		// Partial records of both streams interleaved, a line that is no
		// record, a last line left open, and a torn last record.
		sdk.ContainerLog: `2024-05-01T10:00:00Z stdout F one
2024-05-01T10:00:00.001Z stderr P err-
2024-05-01T10:00:00.002+02:00 stdout P tw
not a record
2024-05-01T10:00:00.003Z stdout F o
2024-05-01T10:00:00.004Z stderr F line
2024-05-01T10:00:00.005Z stdout F three
2024-05-01T10:00:00.006Z stderr P unterminated
2024-05-01T10:00:00.007Z stdout F torn record without its newline`,
	}
	rotated := map[string]string{
		sdk.StdoutLog + sdk.RotatedSuffix: "a\nb\n",
		sdk.StdoutLog:                     "c\n",
		sdk.StderrLog + sdk.RotatedSuffix: "x\n",
		sdk.StderrLog:                     "y\n",
	}
	// The runtime rotates where its cap falls, inside a line.
	cut := map[string]string{
		sdk.StdoutLog + sdk.RotatedSuffix: "a\nha",
		sdk.StdoutLog:                     "lf\nb\n",
		sdk.StderrLog:                     "x\n",
	}
	criRotated := map[string]string{
		sdk.ContainerLog + sdk.RotatedSuffix: logstest.CRI("stdout F one", "stdout P tw"),
		sdk.ContainerLog:                     logstest.CRI("stdout F o", "stderr F err"),
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		opts  Options
		want  string
	}{
		{"plain", plain, all, "a\nb\nc\nx\ny\n"},
		{"plain stdout", plain, with(stdoutOnly), "a\nb\nc\n"},
		{"plain stderr", plain, with(stderrOnly), "x\ny\n"},
		{"plain tail 1", plain, with(tail(1)), "y\n"},
		{"plain tail across the streams", plain, with(tail(3)), "c\nx\ny\n"},
		{"plain tail 0", plain, with(tail(0)), ""},
		{"plain tail beyond", plain, with(tail(100)), "a\nb\nc\nx\ny\n"},
		{"plain stdout tail", plain, with(func(o *Options) { stdoutOnly(o); o.TailLines = 2 }), "b\nc\n"},
		{"plain limit", plain, with(limit(3)), "a\nb"},
		{"plain limit beyond", plain, with(limit(1000)), "a\nb\nc\nx\ny\n"},
		{"plain tail and limit", plain, with(func(o *Options) { stdoutOnly(o); o.TailLines, o.LimitBytes = 2, 2 }), "b\n"},
		{"no files", nil, all, ""},
		{"empty files", map[string]string{sdk.StdoutLog: "", sdk.StderrLog: ""}, all, ""},
		{"no stderr file", map[string]string{sdk.StdoutLog: "only\n"}, all, "only\n"},
		{"cri", cri, all, "one\ntwo\nerr-line\nthree\nunterminated\n"},
		{"cri stdout", cri, with(stdoutOnly), "one\ntwo\nthree\n"},
		{"cri stderr", cri, with(stderrOnly), "err-line\nunterminated\n"},
		{"cri tail", cri, with(tail(2)), "three\nunterminated\n"},
		{"cri stdout tail", cri, with(func(o *Options) { stdoutOnly(o); o.TailLines = 2 }), "two\nthree\n"},
		{"cri tail 0", cri, with(tail(0)), ""},
		{"cri limit", cri, with(limit(6)), "one\ntw"},
		{"rotated", rotated, all, "a\nb\nc\nx\ny\n"},
		{"rotated stdout tail", rotated, with(func(o *Options) { stdoutOnly(o); o.TailLines = 2 }), "b\nc\n"},
		{"rotated tail", rotated, with(tail(3)), "c\nx\ny\n"},
		{"rotated tail into the older part", rotated, with(tail(4)), "b\nc\nx\ny\n"},
		{"rotation cut a line", cut, all, "a\nhalf\nb\nx\n"},
		{"rotation cut a line, tail", cut, with(tail(3)), "half\nb\nx\n"},
		{"rotated, the next file not there yet", map[string]string{sdk.StdoutLog + sdk.RotatedSuffix: "old\n"}, all, "old\n"},
		// A partial record at the end of the rotated file goes on in the
		// current one.
		{"cri rotated", criRotated, all, "one\ntwo\nerr\n"},
		{"cri rotated tail", criRotated, with(func(o *Options) { stdoutOnly(o); o.TailLines = 1 }), "two\n"},
		{"cri rotated, the next file not there yet", map[string]string{sdk.ContainerLog + sdk.RotatedSuffix: logstest.CRI("stdout F old")}, all, "old\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := snapshot(t, taskDir(t, tc.files), tc.opts); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
			// A follow of a task that has ended serves the same, and ends.
			ended := make(chan struct{})
			close(ended)
			opts := tc.opts
			opts.Follow, opts.Ended = true, ended
			if got := snapshot(t, taskDir(t, tc.files), opts); got != tc.want {
				t.Errorf("following an ended task: got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestLongLines: a line longer than MaxLineBytes is served in pieces, and
// its last lines are found without reading all of it.
func TestLongLines(t *testing.T) {
	dir := taskDir(t, map[string]string{sdk.StdoutLog: strings.Repeat("x", 4<<20)})
	for _, n := range []int{1, 3} {
		got := snapshot(t, dir, with(tail(n)))
		lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
		if len(lines) != n || len(got) > n*(MaxLineBytes+1) {
			t.Errorf("tail %d: %d bytes in %d lines; want %d lines of at most %d bytes", n, len(got), len(lines), n, MaxLineBytes)
		}
	}
	got := snapshot(t, dir, all)
	if len(got) != 4<<20+16 || strings.Count(got, "\n") != 16 {
		t.Errorf("all: %d bytes in %d lines; want 16 lines of %d bytes", len(got), strings.Count(got, "\n"), MaxLineBytes)
	}
}

func TestOpenRefuses(t *testing.T) {
	root := t.TempDir()
	if _, err := Open(filepath.Join(root, "gone"), all); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a directory not there: %v, want fs.ErrNotExist", err)
	}
	if err := os.Symlink(t.TempDir(), filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(root, "link"), all); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a directory that is a link: %v, want a refusal", err)
	}
	for _, name := range []string{sdk.StdoutLog, sdk.ContainerLog, sdk.StderrLog + sdk.RotatedSuffix} {
		dir := taskDir(t, nil)
		secret := filepath.Join(t.TempDir(), "secret")
		writeFile(t, filepath.Dir(secret), "secret", "a secret\n")
		if err := os.Symlink(secret, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if r, err := Open(dir, all); err == nil {
			r.Close()
			t.Errorf("%s a link: opened, want a refusal", name)
		}
	}
}

// follower reads the lines a following Copy writes.
type follower struct {
	logstest.Lines
	done   chan error
	cancel context.CancelFunc
}

func follow(t *testing.T, dir string, opts Options) *follower {
	t.Helper()
	opts.Follow = true
	r, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Following() {
		t.Fatal("not following")
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	f := &follower{Lines: logstest.ReadLines(pr), done: make(chan error, 1), cancel: cancel}
	go func() {
		err := r.Copy(ctx, pw)
		r.Close()
		pw.Close()
		f.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		pr.Close()
	})
	return f
}

// expectEnd reads the last lines, then the end of the follow.
func (f *follower) expectEnd(t *testing.T, last ...string) {
	t.Helper()
	f.Expect(t, last...)
	f.ExpectEnd(t)
	select {
	case err := <-f.done:
		if err != nil {
			t.Fatalf("Copy: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Copy did not return within 10s")
	}
}

func TestFollow(t *testing.T) {
	for _, tc := range []struct {
		name string
		// files are there at Open.
		files map[string]string
		opts  Options
		// steps run one after the other: write, then read the lines.
		steps []step
		// end ends the follow.
		end func(ended chan struct{}, f *follower)
		// last are the lines that come as the follow ends.
		last []string
	}{
		{
			name:  "plain: lines as they come, a line held until it ends",
			files: map[string]string{sdk.StdoutLog: "before\n", sdk.StderrLog: ""},
			opts:  all,
			steps: []step{
				{nil, []string{"before"}},
				{appendTo(sdk.StderrLog, "err 1\n"), []string{"err 1"}},
				{appendTo(sdk.StdoutLog, "out "), nil},
				{appendTo(sdk.StdoutLog, "2\nlast, unterminated"), []string{"out 2"}},
			},
			end:  endTask,
			last: []string{"last, unterminated"},
		},
		{
			name: "files not there yet",
			opts: all,
			steps: []step{
				{appendTo(sdk.StderrLog, "err 1\n"), []string{"err 1"}},
				{appendTo(sdk.StdoutLog, "out 1\n"), []string{"out 1"}},
			},
			end: endTask,
		},
		{
			name:  "on across rotations, a line the rotation cut served whole",
			files: map[string]string{sdk.StdoutLog: "1\n"},
			opts:  with(stdoutOnly),
			steps: []step{
				{nil, []string{"1"}},
				{appendTo(sdk.StdoutLog, "2\npar"), []string{"2"}},
				{rotate(sdk.StdoutLog, "tial\n3\n"), []string{"partial", "3"}},
				{rotate(sdk.StdoutLog, "4\n"), []string{"4"}},
			},
			end: endTask,
		},
		{
			name:  "a container log that appears",
			files: map[string]string{sdk.StdoutLog: "", sdk.StderrLog: ""},
			opts:  with(stdoutOnly),
			steps: []step{
				{appendTo(sdk.ContainerLog, logstest.CRI("stdout P hel", "stderr F not this")), nil},
				{appendTo(sdk.ContainerLog, logstest.CRI("stdout F lo")), []string{"hello"}},
			},
			end: endTask,
		},
		{
			name:  "a container log rotated",
			files: map[string]string{sdk.ContainerLog: logstest.CRI("stdout F one", "stdout P tw")},
			opts:  all,
			steps: []step{
				{nil, []string{"one"}},
				{rotate(sdk.ContainerLog, logstest.CRI("stdout F o")), []string{"two"}},
			},
			end: endTask,
		},
		{
			name:  "the tail of what is there, then what comes",
			files: map[string]string{sdk.ContainerLog: logstest.CRI("stdout F a", "stdout F b", "stdout F c")},
			opts:  with(tail(1)),
			steps: []step{
				{nil, []string{"c"}},
				{appendTo(sdk.ContainerLog, logstest.CRI("stdout F d")), []string{"d"}},
			},
			end: endTask,
		},
		{
			name:  "the byte limit ends it",
			files: map[string]string{sdk.StdoutLog: ""},
			opts:  with(limit(4)),
			steps: []step{{appendTo(sdk.StdoutLog, "abcdef\n"), []string{"abcd"}}},
		},
		{
			name:  "the context ends it",
			files: map[string]string{sdk.StdoutLog: "x\n"},
			opts:  all,
			steps: []step{{nil, []string{"x"}}},
			end:   func(_ chan struct{}, f *follower) { f.cancel() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := taskDir(t, tc.files)
			ended := make(chan struct{})
			opts := tc.opts
			opts.Ended = ended
			f := follow(t, dir, opts)
			for _, s := range tc.steps {
				if s.do != nil {
					s.do(t, dir)
				}
				f.Expect(t, s.want...)
			}
			if tc.end != nil {
				tc.end(ended, f)
			}
			f.expectEnd(t, tc.last...)
		})
	}
}

type step struct {
	do   func(t *testing.T, dir string)
	want []string
}

func appendTo(name, content string) func(*testing.T, string) {
	return func(t *testing.T, dir string) { logstest.Append(t, filepath.Join(dir, name), content) }
}

// rotate does what a runtime does at its cap: the file is renamed aside,
// and the output goes on in a new one.
func rotate(name, content string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.Rename(path, path+sdk.RotatedSuffix); err != nil {
			t.Fatal(err)
		}
		logstest.Append(t, path, content)
	}
}

func endTask(ended chan struct{}, _ *follower) { close(ended) }
