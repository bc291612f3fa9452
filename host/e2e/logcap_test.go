package e2e

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOutputCap: under --max-task-log-bytes 1Mi a task that writes 50 MB
// runs to a normal end, its output stays within about the cap on disk,
// and the newest output is what the logs endpoint serves.
func TestOutputCap(t *testing.T) {
	h := startHost(t, "--max-task-log-bytes", "1Mi")
	h.mustDo(http.StatusCreated, "POST", "/tasks", shTask("chatty", `head -c 50000000 /dev/zero | tr '\0' x; echo; echo done`))
	term := h.waitTerminated("chatty", time.Minute).Status.State.Terminated
	if term.ExitCode != 0 || term.Reason != "Succeeded" {
		t.Fatalf("chatty terminated %+v; want Succeeded", term)
	}
	var onDisk int64
	files, _ := filepath.Glob(filepath.Join(h.dataDir, "chatty", "std*.log*"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil {
			onDisk += fi.Size()
		}
	}
	if onDisk == 0 || onDisk > 2<<20 {
		t.Errorf("the output files %v hold %d bytes; want at most about 1 MiB per stream", files, onDisk)
	}
	if code, _, body := h.getText("/tasks/chatty/logs?stream=stdout&tailLines=1"); code != 200 || body != "done\n" {
		t.Errorf("last line: %d %q; want \"done\\n\"", code, body)
	}
}

// TestOutputCapFollow: a follow reads on across rotations of the output
// file: the lines it gets are in order, none twice, and it ends with the
// task's last line.
func TestOutputCapFollow(t *testing.T) {
	h := startHost(t, "--max-task-log-bytes", "1Mi")
	// About 2.5 MB of numbered lines: several rotations of a 512 KiB file.
	h.mustDo(http.StatusCreated, "POST", "/tasks", shTask("lines",
		`sleep 0.3; i=0; while [ $i -lt 40 ]; do seq $((i*5000)) $((i*5000+4999)) | sed 's/^/line /'; i=$((i+1)); sleep 0.02; done`))
	resp, err := http.Get(h.url + "/tasks/lines/logs?follow=true&stream=stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	last, n := -1, 0
	for sc.Scan() {
		v, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "line "))
		if err != nil {
			t.Fatalf("unexpected line %q", sc.Text())
		}
		if v <= last {
			t.Fatalf("line %d after line %d: out of order or twice", v, last)
		}
		last, n = v, n+1
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading the follow: %v", err)
	}
	if last != 199999 {
		t.Errorf("the follow ended at line %d after %d lines; want it to end with line 199999", last, n)
	}
	if term := h.waitTerminated("lines", 10*time.Second).Status.State.Terminated; term.ExitCode != 0 {
		t.Errorf("lines terminated %+v", term)
	}
}
