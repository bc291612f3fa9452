package shim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testWrapper writes a wrapper that works as sandboxing wrappers do: it
// says so, runs its arguments as a child and exits as the child did.
func testWrapper(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wrapper")
	script := "#!/bin/sh\necho \"wrapped: $1\"\n\"$@\" &\nwait $!\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWrap(t *testing.T) {
	t.Parallel()
	wrapper := testWrapper(t)
	t.Run("runs the command, found in PATH, through the wrapper", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		spec := k.spec("sh", "-c", "echo ran; exit 3")
		spec.Env = []string{"PATH=/usr/bin:/bin"}
		spec.Wrap = []string{wrapper}
		exit := k.wait(k.started(spec))
		if exit.ExitCode != 3 || exit.Reason != ReasonFailed {
			t.Errorf("exit %+v, want Failed 3", exit)
		}
		if out, _ := os.ReadFile(k.stdout); !strings.HasPrefix(string(out), "wrapped: /") || !strings.HasSuffix(string(out), "/sh\nran\n") {
			t.Errorf("output %q: want the wrapper's line with the command's full path, then the command's", out)
		}
	})
	t.Run("a missing command is the task's start error, the wrapper never runs", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		spec := k.spec("no-such-command-here")
		spec.Wrap = []string{wrapper}
		res := k.launch(spec)
		if res.Exit == nil || res.Exit.ExitCode != 127 || res.Exit.Reason != ReasonStartError || !strings.Contains(res.Exit.Message, "no-such-command-here") {
			t.Fatalf("launch %+v: want a StartError 127 naming the command", res)
		}
		if out, _ := os.ReadFile(k.stdout); len(out) != 0 {
			t.Errorf("the wrapper ran: %q", out)
		}
	})
	t.Run("a stop's SIGTERM reaches the task, not the wrapper", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		spec := k.sh(`trap 'echo got TERM; exit 7' TERM; echo ready; sleep 60 & wait`)
		spec.Wrap = []string{wrapper}
		st := k.started(spec)
		eventually(t, "the task is ready", func() bool {
			out, _ := os.ReadFile(k.stdout)
			return strings.Contains(string(out), "ready\n")
		})
		k.stop(30 * time.Second)
		exit := k.wait(st)
		if exit.ExitCode != 7 {
			t.Errorf("exit %+v: want the task's own 7, from its handler, through the wrapper", exit)
		}
		if out, _ := os.ReadFile(k.stdout); !strings.Contains(string(out), "got TERM\n") {
			t.Errorf("output %q: the task did not handle SIGTERM", out)
		}
	})
	t.Run("the wrapper's 128+N is death by signal N", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		spec := k.sh("kill -9 $$")
		spec.Wrap = []string{wrapper}
		if exit := k.wait(k.started(spec)); exit.ExitCode != 137 || exit.Signal != 9 || exit.Reason != ReasonFailed {
			t.Errorf("exit %+v, want Failed 137 by signal 9", exit)
		}
	})
	t.Run("the wrapper is named by an absolute path", func(t *testing.T) {
		t.Parallel()
		k := newTask(t)
		spec := k.sh("true")
		spec.Wrap = []string{"wrapper"}
		ctx, cancel := context.WithTimeout(t.Context(), patience)
		defer cancel()
		if _, err := Launch(ctx, shimBin, k.dir, spec); err == nil || !strings.Contains(err.Error(), "absolute") {
			t.Errorf("Launch: %v, want a refusal of the relative wrapper", err)
		}
	})
}

// TestAwaitGone: AwaitGone waits while the shim lives, and returns once it
// has exited, after which its directory can be removed whole at once.
func TestAwaitGone(t *testing.T) {
	t.Parallel()
	k := newTask(t)
	st := k.started(k.sh("sleep 60"))
	short, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := AwaitGone(short, k.dir); err == nil {
		t.Fatal("AwaitGone returned while the shim runs")
	}
	k.stop(0)
	k.wait(st)
	ctx, cancel2 := context.WithTimeout(t.Context(), patience)
	defer cancel2()
	if err := AwaitGone(ctx, k.dir); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(k.dir); err != nil {
		t.Fatalf("the shim's directory, once it is gone: %v", err)
	}
}
