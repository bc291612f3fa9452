package tasks

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// TestDeleteDuringCreate: a deletion that arrives while a creation is being
// made durable (the task is in the table already) must not fail that
// creation: the creation took place, the deletion follows it. With the
// task queued a deletion needs nothing but the disk, which makes the window
// widest.
func TestDeleteDuringCreate(t *testing.T) {
	e := newEnv(t, t.TempDir(), newFake(), Config{MaxConcurrent: 1})
	e.create("holds-the-slot")
	ctx := context.Background()
	for i := 0; i < 200; i++ {
		name := fmt.Sprintf("task-%d", i)
		created := make(chan error, 1)
		go func() {
			_, err := e.c.Create(ctx, NewTask{Name: name, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
			created <- err
		}()
		// Delete as soon as the table shows the task.
		var err error
		for {
			if err = e.c.Delete(ctx, name, nil); !errors.Is(err, ErrNotFound) {
				break
			}
			select {
			case cerr := <-created:
				created <- cerr
			default:
				continue
			}
			if err = e.c.Delete(ctx, name, nil); errors.Is(err, ErrNotFound) {
				err = nil // the task was created and deleted before the loop saw it
			}
			break
		}
		if err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		if err := <-created; err != nil {
			t.Fatalf("create %s, deleted meanwhile: %v", name, err)
		}
	}
}

// TestStaleEventOfSameName: a task deleted and created anew under the same
// name must not take the state its predecessor's runtime reported late,
// while the new task's start is under way; its own states still count.
func TestStaleEventOfSameName(t *testing.T) {
	rt := newFake()
	block := make(chan struct{})
	rt.block = block
	e := newEnv(t, t.TempDir(), rt, Config{})
	before := time.Now()
	e.create("again")
	e.c.Report("process", sdk.TaskStatus{Name: "again", State: sdk.Terminated(143, 15, "Failed", "stopped on request", before.Add(-time.Second), before)})
	if got := e.state("again"); got != "waiting:Initialized" {
		t.Fatalf("after its predecessor's late exit, the new task is %s", got)
	}
	e.c.Report("process", sdk.TaskStatus{Name: "again", State: sdk.Terminated(3, 0, "Failed", "", time.Now(), time.Now())})
	if got := e.state("again"); got != "terminated:3" {
		t.Fatalf("after its own exit, the new task is %s", got)
	}
	close(block)
}

// TestCreateAnswersTheStateAfterCommit: what a create answers is the task
// as it is once its record is durable, so a task that ended meanwhile is
// answered as terminated, as setTasks does.
func TestCreateAnswersTheStateAfterCommit(t *testing.T) {
	rt := newFake()
	e := newEnv(t, t.TempDir(), rt, Config{})
	testHookCommitted = func(name string) {
		e.waitFor("the task to start", func() bool { return e.state(name) == "running" })
		rt.exit(name, 3)
		e.waitFor("the task to end", func() bool { return e.state(name) == "terminated:3" })
	}
	t.Cleanup(func() { testHookCommitted = func(string) {} })
	got, err := e.c.Create(context.Background(), NewTask{Name: "quick", Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got.State.Terminated == nil || got.State.Terminated.ExitCode != 3 {
		t.Fatalf("create answered %+v, want the task terminated with 3", got.State)
	}
}

// TestSlowValidateBlocksNoOne: while a runtime's Validate of one task
// hangs (a slow plugin), in a create and in a setTasks, every other create,
// delete and setTasks goes through: no request holds a lock across a
// runtime's call.
func TestSlowValidateBlocksNoOne(t *testing.T) {
	rt := newFake()
	entered, release := make(chan struct{}), make(chan struct{})
	rt.slowEntered, rt.slowRelease = entered, release
	e := newEnv(t, t.TempDir(), rt, Config{})
	e.create("old-1")
	e.create("old-2")
	ctx := context.Background()
	spec := func(cmd string) sdk.TaskSpec { return sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{cmd}}} }

	created := make(chan error, 1)
	go func() {
		_, err := e.c.Create(ctx, NewTask{Name: "slow-create", Spec: spec("slow")})
		created <- err
	}()
	<-entered
	synced := make(chan error, 1)
	go func() {
		_, err := e.c.Sync(ctx, []NewTask{
			{Name: "old-1", Spec: spec("sleep")}, {Name: "old-2", Spec: spec("sleep")}, {Name: "slow-sync", Spec: spec("slow")},
		})
		synced <- err
	}()
	<-entered // the setTasks is in Validate too

	done := make(chan error, 1)
	go func() {
		for i := 0; i < 20; i++ {
			name := fmt.Sprintf("quick-%d", i)
			if _, err := e.c.Create(ctx, NewTask{Name: name, Spec: spec("true")}); err != nil {
				done <- err
				return
			}
			if err := e.c.Delete(ctx, name, nil); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("creates and deletes waited for a runtime's Validate of other tasks")
	}
	for _, name := range []string{"slow-create", "slow-sync"} {
		if _, ok := e.c.Get(name); ok {
			t.Fatalf("%s is in the table before its Validate answered", name)
		}
	}
	close(release)
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	if err := <-synced; err != nil {
		t.Fatal(err)
	}
	// The setTasks took place before slow-create was in the table (its
	// create answered later), so it leaves it alone.
	for _, name := range []string{"slow-sync", "slow-create", "old-1", "old-2"} {
		if _, ok := e.c.Get(name); !ok {
			t.Fatalf("%s is gone", name)
		}
	}
}
