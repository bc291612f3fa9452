package logs

import (
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/logs/logstest"
)

func TestParseCRIRecord(t *testing.T) {
	for _, tc := range []struct {
		line, text   string
		stream       criStream
		partial, bad bool
	}{
		{line: "2024-05-01T10:00:00.123456789Z stdout F hello world", stream: criStdout, text: "hello world"},
		{line: "2024-05-01T10:00:00.123456789+02:00 stderr P part", stream: criStderr, partial: true, text: "part"},
		{line: "2024-05-01T10:00:00Z stdout F ", stream: criStdout, text: ""},
		{line: "2024-05-01T10:00:00Z stdout F", stream: criStdout, text: ""},
		{line: "2024-05-01T10:00:00Z stdout F  two  spaces ", stream: criStdout, text: " two  spaces "},
		{line: "2024-05-01T10:00:00Z stdout P:extra text", stream: criStdout, partial: true, text: "text"},
		{line: "", bad: true},
		{line: "garbage", bad: true},
		{line: "not-a-time stdout F x", bad: true},
		{line: "2024-05-01T10:00:00Z stdin F x", bad: true},
		{line: "2024-05-01T10:00:00Z stdout", bad: true},
		{line: "2024-05-01T10:00:00Z stdout X x", bad: true},
		{line: "2024-05-01T10:00:00Z stdout  x", bad: true},
	} {
		r, err := parseCRIRecord([]byte(tc.line))
		if tc.bad {
			if err == nil {
				t.Errorf("%q: parsed, want an error", tc.line)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.line, err)
			continue
		}
		if r.Stream != tc.stream || r.Partial != tc.partial || string(r.Text) != tc.text || r.Time.IsZero() {
			t.Errorf("%q: got %+v (text %q)", tc.line, r, r.Text)
		}
	}
	r, _ := parseCRIRecord([]byte("2024-05-01T10:00:00.5Z stdout F x"))
	if want := time.Date(2024, 5, 1, 10, 0, 0, 5e8, time.UTC); !r.Time.Equal(want) {
		t.Errorf("time %v, want %v", r.Time, want)
	}
}

func TestCRIDecoder(t *testing.T) {
	for _, tc := range []struct {
		name           string
		log            string
		stdout, stderr bool
		want           []string
		malformed      int
	}{
		{name: "full lines", log: logstest.CRI("stdout F a", "stderr F b", "stdout F c"),
			stdout: true, stderr: true, want: []string{"a", "b", "c"}},
		{name: "partials joined", log: logstest.CRI("stdout P he", "stdout P ll", "stdout F o", "stdout F next"),
			stdout: true, stderr: true, want: []string{"hello", "next"}},
		{name: "partials of two streams do not mix", log: logstest.CRI("stdout P out-", "stderr F err", "stdout F line"),
			stdout: true, stderr: true, want: []string{"err", "out-line"}},
		{name: "stdout only", log: logstest.CRI("stdout P a", "stderr F b", "stdout F c"),
			stdout: true, want: []string{"ac"}},
		{name: "stderr only", log: logstest.CRI("stdout F a", "stderr P b", "stderr F c"),
			stderr: true, want: []string{"bc"}},
		{name: "empty lines", log: logstest.CRI("stdout F ", "stdout F"),
			stdout: true, want: []string{"", ""}},
		{name: "open line flushed at the end", log: logstest.CRI("stdout P unterminated"),
			stdout: true, want: []string{"unterminated"}},
		{name: "open lines flushed in the order begun", log: logstest.CRI("stderr P e", "stdout P o"),
			stdout: true, stderr: true, want: []string{"e", "o"}},
		{name: "malformed lines skipped", log: logstest.CRI("stdout F a", "!garbage", "!2024-05-01T10:00:00Z stdin F x", "stdout F b"),
			stdout: true, stderr: true, want: []string{"a", "b"}, malformed: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newCRIDecoder(tc.stdout, tc.stderr)
			var got []string
			emit := func(b []byte) { got = append(got, string(b)) }
			for _, l := range strings.Split(strings.TrimSuffix(tc.log, "\n"), "\n") {
				d.line([]byte(l), emit)
			}
			d.flush(emit)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if d.malformed != tc.malformed {
				t.Fatalf("malformed %d, want %d", d.malformed, tc.malformed)
			}
		})
	}
}

func TestCRIDecoderCutsEndlessLines(t *testing.T) {
	d := newCRIDecoder(true, true)
	var got []int
	chunk := strings.Repeat("x", 16<<10)
	for i := 0; i < MaxLineBytes/len(chunk)+1; i++ {
		d.line([]byte("2024-05-01T10:00:00Z stdout P "+chunk), func(b []byte) { got = append(got, len(b)) })
	}
	d.flush(func(b []byte) { got = append(got, len(b)) })
	if len(got) != 2 || got[0] != MaxLineBytes || got[1] != len(chunk) {
		t.Fatalf("got lines of %v bytes", got)
	}
}
