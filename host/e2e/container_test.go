package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/sdk"
)

// containerHost starts a host in container mode on the test containerd,
// and removes whatever its tasks left in containerd when the test ends.
func containerHost(t *testing.T, env *containerdtest.Env, extra ...string) (*hostProc, cri.RuntimeServiceClient) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rt := cri.NewRuntimeServiceClient(conn)
	h := startHost(t, append([]string{"--enable-container-mode", "--cri-socket", env.Socket}, extra...)...)
	t.Cleanup(func() {
		// Registered after the host's own clean-up, so it runs first: a
		// test that failed half-way leaves no container behind.
		for _, b := range ownSandboxes(t, rt, h.dataDir) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, _ = rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: b.Id})
			_, _ = rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: b.Id})
			cancel()
		}
	})
	return h, rt
}

// ownSandboxes lists the sandboxes of the host on dataDir, found by its
// owner ID as the cri plugin finds them.
func ownSandboxes(t *testing.T, rt cri.RuntimeServiceClient, dataDir string) []*cri.PodSandbox {
	t.Helper()
	owner, err := os.ReadFile(filepath.Join(dataDir, ".cri-owner"))
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{Filter: &cri.PodSandboxFilter{
		LabelSelector: map[string]string{"task-executor.opensandbox.io/owner": strings.TrimSpace(string(owner))},
	}})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	return resp.Items
}

// containerTask runs a script in the busybox test image.
func containerTask(env *containerdtest.Env, name, script string, mounts ...map[string]any) map[string]any {
	c := map[string]any{
		"name": "main", "image": env.BusyboxImage, "imagePullPolicy": "IfNotPresent",
		"command": []string{"sh", "-c", script},
	}
	if len(mounts) > 0 {
		c["volumeMounts"] = mounts
	}
	return map[string]any{"name": name, "spec": map[string]any{"container": c}}
}

func (h *hostProc) waitRunning(name string, within time.Duration) time.Time {
	h.t.Helper()
	var at time.Time
	eventually(h.t, within, func() bool {
		task, ok := h.get(name)
		if ok && task.Status.State.Running != nil {
			at = task.Status.State.Running.StartedAt.Time
			return true
		}
		return false
	}, func() string {
		task, _ := h.get(name)
		return fmt.Sprintf("task %s never ran: %+v", name, task.Status.State)
	})
	return at
}

// TestContainerMode: container tasks through the host's API, on a real
// containerd: exit codes, volumes (spec's and the operator's), the log in
// the task's directory, a 400 for a volume nobody offers, delete of a
// running container, and nothing left in containerd afterwards.
func TestContainerMode(t *testing.T) {
	env := containerdtest.Require(t)
	offered := t.TempDir()
	if err := os.WriteFile(filepath.Join(offered, "input"), []byte("operator-data"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, rt := containerHost(t, env, "--volume", "data-volume="+offered)

	before := dirListing(t, h.dataDir)
	code, body := h.do("POST", "/tasks", containerTask(env, "no-such-volume", "true", map[string]any{"name": "elsewhere", "mountPath": "/x"}))
	if code != http.StatusBadRequest || !strings.Contains(string(body), "names no volume") {
		t.Errorf("a mount of an unknown volume: %d %s; want 400 naming the problem", code, body)
	}
	if after := dirListing(t, h.dataDir); after != before {
		t.Errorf("a refused task changed the data directory:\nbefore: %s\nafter:  %s", before, after)
	}

	task := containerTask(env, "reads-data", `echo "hello $GREETING"; cat /data/input; echo; echo oops >&2; echo out > /scratch/f; exit 3`,
		map[string]any{"name": "data-volume", "mountPath": "/data", "readOnly": true},
		map[string]any{"name": "scratch", "mountPath": "/scratch"})
	spec := task["spec"].(map[string]any)
	spec["container"].(map[string]any)["env"] = []map[string]string{{"name": "GREETING", "value": "world"}}
	spec["volumes"] = []map[string]any{{"name": "scratch", "emptyDir": map[string]any{}}}
	h.mustDo(http.StatusCreated, "POST", "/tasks", task)
	term := h.waitTerminated("reads-data", time.Minute).Status.State.Terminated
	if term.ExitCode != 3 || term.Reason != "Failed" || term.StartedAt.IsZero() {
		t.Errorf("reads-data terminated %+v; want exit code 3, reason Failed", term)
	}
	taskDir := filepath.Join(h.dataDir, "reads-data")
	eventually(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(taskDir, sdk.ContainerLog))
		return strings.Contains(string(b), " stdout F hello world\n") && strings.Contains(string(b), " stdout F operator-data\n") &&
			strings.Contains(string(b), " stderr F oops\n")
	}, func() string {
		b, err := os.ReadFile(filepath.Join(taskDir, sdk.ContainerLog))
		return fmt.Sprintf("%s lacks the output: %q %v", sdk.ContainerLog, b, err)
	})
	if b, err := os.ReadFile(filepath.Join(taskDir, "volumes", "scratch", "f")); err != nil || string(b) != "out\n" {
		t.Errorf("emptyDir volume holds %q, %v", b, err)
	}
	// The logs endpoint turns the CRI log back into plain lines.
	for query, want := range map[string]string{
		"?stream=stdout":             "hello world\noperator-data\n",
		"?stream=stderr":             "oops\n",
		"?stream=stdout&tailLines=1": "operator-data\n",
	} {
		if code, _, body := h.getText("/tasks/reads-data/logs" + query); code != http.StatusOK || body != want {
			t.Errorf("logs%s: %d %q, want %q", query, code, body, want)
		}
	}

	h.mustDo(http.StatusCreated, "POST", "/tasks", containerTask(env, "long", "sleep 300"))
	h.waitRunning("long", time.Minute)
	h.mustDo(http.StatusNoContent, "DELETE", "/tasks/long?gracePeriodSeconds=1", nil)
	h.mustDo(http.StatusNoContent, "DELETE", "/tasks/reads-data", nil)
	eventually(t, 30*time.Second, func() bool {
		_, a := h.get("long")
		_, b := h.get("reads-data")
		return !a && !b
	}, func() string { return "deleted tasks are still there" })
	eventually(t, 30*time.Second, func() bool { return len(ownSandboxes(t, rt, h.dataDir)) == 0 },
		func() string { return fmt.Sprintf("sandboxes left in containerd: %v", ownSandboxes(t, rt, h.dataDir)) })
}

// TestContainerModeCrashes: kill -9 of the host and of the cri plugin
// loses nothing: a running container is adopted with its start time, and
// the exit code of one that ended while the host was down is reported.
func TestContainerModeCrashes(t *testing.T) {
	env := containerdtest.Require(t)
	h, rt := containerHost(t, env)
	h.mustDo(http.StatusCreated, "POST", "/tasks", containerTask(env, "long", "sleep 300"))
	h.mustDo(http.StatusCreated, "POST", "/tasks", containerTask(env, "short", "sleep 2; exit 7"))
	began := h.waitRunning("long", time.Minute)
	h.waitRunning("short", time.Minute)

	h.kill9()
	// The short task ends while nobody watches.
	eventually(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := rt.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
			LabelSelector: map[string]string{"task-executor.opensandbox.io/task": "short"},
		}})
		return err == nil && len(resp.Containers) == 1 && resp.Containers[0].State == cri.ContainerState_CONTAINER_EXITED
	}, func() string { return "the short container did not exit" })
	h.restart()
	if term := h.waitTerminated("short", time.Minute).Status.State.Terminated; term.ExitCode != 7 {
		t.Errorf("short terminated %+v after the host's restart; want exit code 7", term)
	}
	if at := h.waitRunning("long", 30*time.Second); !at.Equal(began) {
		t.Errorf("long runs since %v after the host's restart; it started at %v", at, began)
	}

	pid := h.pluginPIDOf("cri")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The host starts a new plugin, which adopts the container; until it is
	// up, a create answers 503 and the client retries.
	eventually(t, 30*time.Second, func() bool {
		code, body := h.do("POST", "/tasks", containerTask(env, "after", "exit 0"))
		if code != http.StatusCreated && code != http.StatusServiceUnavailable {
			t.Fatalf("POST after the plugin's crash: %d %s", code, body)
		}
		return code == http.StatusCreated
	}, func() string { return "the cri runtime did not come back" })
	if term := h.waitTerminated("after", time.Minute).Status.State.Terminated; term.ExitCode != 0 {
		t.Errorf("a task after the plugin's restart terminated %+v", term)
	}
	if at := h.waitRunning("long", 30*time.Second); !at.Equal(began) {
		t.Errorf("long runs since %v after the plugin's restart; it started at %v", at, began)
	}

	for _, name := range []string{"long", "short", "after"} {
		h.mustDo(http.StatusNoContent, "DELETE", "/tasks/"+name+"?gracePeriodSeconds=0", nil)
	}
	eventually(t, 30*time.Second, func() bool { return len(h.list()) == 0 && len(ownSandboxes(t, rt, h.dataDir)) == 0 },
		func() string {
			return fmt.Sprintf("left: %d tasks, sandboxes %v", len(h.list()), ownSandboxes(t, rt, h.dataDir))
		})
}

// dirListing names every file under dir, to show a refused request wrote
// nothing. The store's own dot-entries (task directories prepared ahead)
// are left out: using one up is not a write of the request's.
func dirListing(t *testing.T, dir string) string {
	t.Helper()
	var names []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		rel := strings.TrimPrefix(p, dir)
		if strings.HasPrefix(rel, "/.") {
			if fi != nil && fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err == nil {
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(names, " ")
}
