package e2e

import (
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/client"
)

// TestClientAgainstHost drives every method of sdk/client against a real
// host that requires a bearer token.
func TestClientAgainstHost(t *testing.T) {
	tokenFile := writeFile(t, t.TempDir(), "token", []byte("client-token\n"))
	h := startHost(t, "--auth-token-file", tokenFile)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := client.New(h.url, client.WithToken("client-token"), client.WithHTTPClient(&http.Client{}))
	if err != nil {
		t.Fatal(err)
	}
	anon, err := client.New(h.url)
	if err != nil {
		t.Fatal(err)
	}

	// Health needs no token; everything else does.
	if err := anon.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	var apiErr *client.APIError
	if _, err := anon.List(ctx); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a list without the token: %v, want a 401", err)
	}
	if err := c.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}

	// Create in both formats; each answers in its own.
	nested, err := c.Create(ctx, client.Task{Name: "nested", Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{
		Command: []string{"sh", "-c", "echo out; echo err >&2; sleep 0.5; echo late"},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	// Just created: waiting, or already running; the client fills in the
	// other format.
	if st := nested.Status.State; st.Terminated != nil || (st.Waiting == nil) == (st.Running == nil) ||
		nested.Process == nil || nested.ProcessStatus == nil || !reflect.DeepEqual(*nested.ProcessStatus, st) {
		t.Fatalf("created %+v, want waiting or running in both formats", nested)
	}
	flat, err := c.Create(ctx, client.Task{Name: "flat", Process: &sdk.ProcessSpec{Command: []string{"sleep", "60"}}})
	if err != nil {
		t.Fatal(err)
	}
	if flat.Spec.Process == nil || flat.ProcessStatus == nil || !reflect.DeepEqual(*flat.ProcessStatus, flat.Status.State) {
		t.Fatalf("created %+v, want both formats", flat)
	}
	if _, err := c.Create(ctx, client.Task{Name: "flat", Process: &sdk.ProcessSpec{Command: []string{"sleep", "60"}}}); !client.IsConflict(err) {
		t.Fatalf("a duplicate create: %v, want a conflict", err)
	}
	var bad *client.APIError
	if _, err := c.Create(ctx, client.Task{Name: "Not_A_Name", Process: &sdk.ProcessSpec{Command: []string{"true"}}}); !errors.As(err, &bad) ||
		bad.StatusCode != http.StatusBadRequest || !strings.Contains(bad.Message, "Not_A_Name") {
		t.Fatalf("an invalid create: %v, want a 400 naming the task", err)
	}

	// Follow the logs while the task runs; the stream ends with the task.
	rc, err := c.Logs(ctx, "nested", client.LogOptions{Stream: "stdout", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(out) != "out\nlate\n" {
		t.Fatalf("followed stdout: %q %v", out, err)
	}

	// GetWait returns once the task has ended; Get returns at once.
	done, err := c.GetWait(ctx, "nested", 30*time.Second)
	if err != nil || !done.Terminated() || done.Status.State.Terminated.Reason != sdk.ReasonSucceeded ||
		done.ProcessStatus == nil || done.ProcessStatus.Terminated == nil {
		t.Fatalf("GetWait: %+v %v", done, err)
	}
	began := time.Now()
	running, err := c.GetWait(ctx, "flat", 200*time.Millisecond)
	if err != nil || running.Terminated() || time.Since(began) < 200*time.Millisecond {
		t.Fatalf("GetWait of a running task: %+v %v after %s", running.Status.State, err, time.Since(began))
	}
	if got, err := c.Get(ctx, "flat"); err != nil || got.Spec.Process == nil || got.Spec.Process.Command[0] != "sleep" {
		t.Fatalf("Get: %+v %v", got, err)
	}
	if _, err := c.Get(ctx, "none"); !client.IsNotFound(err) {
		t.Fatalf("Get of an unknown task: %v, want not found", err)
	}

	for _, lc := range []struct {
		opts client.LogOptions
		want string
	}{
		{client.LogOptions{}, "out\nlate\nerr\n"},
		{client.LogOptions{Stream: "stderr"}, "err\n"},
		{client.LogOptions{TailLines: int64Ptr(1)}, "err\n"},
		{client.LogOptions{Stream: "stdout", LimitBytes: int64Ptr(2)}, "ou"},
	} {
		rc, err := c.Logs(ctx, "nested", lc.opts)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || string(out) != lc.want {
			t.Fatalf("logs %+v: %q %v, want %q", lc.opts, out, err, lc.want)
		}
	}
	if _, err := c.Logs(ctx, "none", client.LogOptions{}); !client.IsNotFound(err) {
		t.Fatalf("logs of an unknown task: %v", err)
	}
	if _, err := c.Logs(ctx, "nested", client.LogOptions{Stream: "both"}); !errors.As(err, &bad) || bad.StatusCode != http.StatusBadRequest {
		t.Fatalf("logs with a bad stream: %v", err)
	}

	// SetTasks: the tasks as listed are kept as they are, "nested" is
	// left out (deleted), "added" is new.
	listed, err := c.List(ctx)
	if err != nil || len(listed) != 2 || listed[0].Name != "flat" || listed[1].Name != "nested" {
		t.Fatalf("List: %+v %v", listed, err)
	}
	all, err := c.SetTasks(ctx, []client.Task{listed[0], {Name: "added", Process: &sdk.ProcessSpec{Command: []string{"true"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) < 2 {
		t.Fatalf("SetTasks answered %+v", all)
	}
	// A changed spec keeps the task as it is, and says so.
	changed := listed[0]
	changed.Spec.Process = &sdk.ProcessSpec{Command: []string{"sleep", "61"}}
	all, err = c.SetTasks(ctx, []client.Task{changed, all[0]})
	if err != nil {
		t.Fatalf("a changed spec: %v", err)
	}
	for _, tk := range all {
		if tk.Name == "flat" && (tk.Status.Message == "" || tk.Spec.Process.Command[len(tk.Spec.Process.Command)-1] == "61") {
			t.Fatalf("the task listed with a changed spec: %+v %+v", tk.Spec.Process, tk.Status)
		}
	}

	// Delete with a grace period; the task goes away.
	grace := 0 * time.Second
	if err := c.Delete(ctx, "flat", &grace); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "none", nil); !client.IsNotFound(err) {
		t.Fatalf("deleting an unknown task: %v", err)
	}
	eventually(t, 15*time.Second, func() bool {
		_, errFlat := c.Get(ctx, "flat")
		_, errNested := c.Get(ctx, "nested")
		return client.IsNotFound(errFlat) && client.IsNotFound(errNested)
	}, func() string { return "the deleted tasks are still there" })
	if left, err := c.List(ctx); err != nil || len(left) != 1 || left[0].Name != "added" {
		t.Fatalf("left: %+v %v", left, err)
	}

	// A transport error names what was being done.
	cancel()
	if _, err := c.List(ctx); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "while listing") {
		t.Fatalf("a canceled list: %v", err)
	}
}

func int64Ptr(v int64) *int64 { return &v }
