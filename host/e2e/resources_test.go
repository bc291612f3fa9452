package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// resourcesTask is a process task running script with the given resources.
func resourcesTask(name, script string, resources map[string]any) map[string]any {
	task := shTask(name, script)
	task["spec"].(map[string]any)["process"].(map[string]any)["resources"] = resources
	return task
}

// taskCgroup is the cgroup the host on dataDir gives task name, read from
// the kernel's files rather than through the host.
func taskCgroup(t *testing.T, dataDir, name string) *cgroups.Group {
	t.Helper()
	mgr, err := cgroups.New("", shimdriver.CgroupID(dataDir, "process"))
	if err != nil {
		t.Fatalf("task cgroups: %v", err)
	}
	g, err := mgr.Group(name)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// cgroupFile reads a file of the task's cgroup in the hierarchy whose
// directory holds it.
func cgroupFile(t *testing.T, g *cgroups.Group, file string) string {
	t.Helper()
	for _, d := range g.Dirs() {
		if b, err := os.ReadFile(filepath.Join(d, file)); err == nil {
			return strings.TrimSpace(string(b))
		}
	}
	t.Fatalf("no %s in the task's cgroup %v", file, g.Dirs())
	return ""
}

// TestMemoryLimitOOMKilled: a process task over its memory limit is killed
// by the kernel in its own cgroup and says so: OOMKilled, 137.
func TestMemoryLimitOOMKilled(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", resourcesTask("hog", "exec dd if=/dev/zero of=/dev/null bs=200M count=1",
		map[string]any{"limits": map[string]any{"memory": "32Mi"}}))
	term := h.waitTerminated("hog", 30*time.Second).Status.State.Terminated
	if term.Reason != "OOMKilled" || term.ExitCode != 137 {
		t.Fatalf("terminated %+v; want OOMKilled, 137", term)
	}
	g := taskCgroup(t, h.dataDir, "hog")
	if got := cgroupFile(t, g, "memory.limit_in_bytes"); got != strconv.Itoa(32<<20) {
		t.Errorf("the task's cgroup has memory.limit_in_bytes %s, want %d", got, 32<<20)
	}
	// A task within its limit is not.
	h.mustDo(201, "POST", "/tasks", resourcesTask("fits", "exec dd if=/dev/zero of=/dev/null bs=4M count=1",
		map[string]any{"limits": map[string]any{"memory": "32Mi"}}))
	if term := h.waitTerminated("fits", 30*time.Second).Status.State.Terminated; term.Reason != "Succeeded" {
		t.Fatalf("a task within its limit: %+v", term)
	}
}

var usedCPU = regexp.MustCompile(`used ([0-9.]+) CPU seconds`)

// TestCPULimit: a busy loop for 3 s under limits.cpu 200m uses about 0.6
// CPU seconds, as the cgroup's own counter, the metrics and the terminated
// state's message all say.
func TestCPULimit(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", resourcesTask("busy", "timeout 3 sh -c 'while :; do :; done'; true",
		map[string]any{"limits": map[string]any{"cpu": "200m"}, "requests": map[string]any{"cpu": "100m"}}))
	g := taskCgroup(t, h.dataDir, "busy")
	var running float64
	eventually(t, 10*time.Second, func() bool {
		running = h.scrape()[`task_executor_task_cpu_seconds_total{task="busy"}`]
		return running > 0
	}, func() string { return "no CPU seconds in the metrics while the task runs" })
	term := h.waitTerminated("busy", 30*time.Second).Status.State.Terminated
	if term.Reason != "Succeeded" {
		t.Fatalf("terminated %+v", term)
	}
	for file, want := range map[string]string{"cpu.cfs_quota_us": "20000", "cpu.cfs_period_us": "100000", "cpu.shares": "102"} {
		if got := cgroupFile(t, g, file); got != want {
			t.Errorf("the task's cgroup has %s %s, want %s", file, got, want)
		}
	}
	ns, err := strconv.ParseInt(cgroupFile(t, g, "cpuacct.usage"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	counted := float64(ns) / 1e9
	fromMetrics := h.scrape()[`task_executor_task_cpu_seconds_total{task="busy"}`]
	m := usedCPU.FindStringSubmatch(term.Message)
	if m == nil {
		t.Fatalf("the terminated state's message %q does not tell the CPU used", term.Message)
	}
	fromMessage, _ := strconv.ParseFloat(m[1], 64)
	for what, v := range map[string]float64{"the cgroup's counter": counted, "the metrics": fromMetrics, "the message": fromMessage} {
		if math.Abs(v-0.6) > 0.15 {
			t.Errorf("%s: %.3f CPU seconds; want 0.6 ± 25%%", what, v)
		}
	}
	if math.Abs(fromMetrics-counted) > 0.01 || math.Abs(fromMessage-counted) > 0.01 {
		t.Errorf("the metrics (%.3f) and the message (%.3f) disagree with the cgroup (%.3f)", fromMetrics, fromMessage, counted)
	}
	if running > fromMetrics {
		t.Errorf("the CPU seconds went down: %.3f while running, %.3f after", running, fromMetrics)
	}
	// Deleted, its series go with it.
	h.mustDo(204, "DELETE", "/tasks/busy", nil)
	eventually(t, 10*time.Second, func() bool { _, ok := h.get("busy"); return !ok },
		func() string { return "the task was never removed" })
	if _, ok := h.scrape()[`task_executor_task_cpu_seconds_total{task="busy"}`]; ok {
		t.Errorf("a deleted task still has CPU seconds in the metrics")
	}
}

// TestTaskCgroupLifecycle: a task without resources gets a cgroup too; all
// it starts, however it leaves the task's process group, is in it; a
// delete while it runs ends them all and removes the cgroup.
func TestTaskCgroupLifecycle(t *testing.T) {
	h := startHost(t)
	var all []string
	for _, e := range escapeScripts {
		all = append(all, e.script)
	}
	name := "tree"
	h.mustDo(201, "POST", "/tasks", shTask(name, strings.Join(all, "\n")+"\nexec sleep 300"))
	escaped := awaitEscapees(t, h, name)
	g := taskCgroup(t, h.dataDir, name)
	procs := map[int]bool{}
	for _, d := range g.Dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			procs[n] = true
		}
	}
	for pid, marker := range escaped {
		if !procs[pid] {
			t.Errorf("escaped process %d (%s) is not in the task's cgroup (%v)", pid, marker, g.Dirs())
		}
	}
	h.mustDo(204, "DELETE", "/tasks/"+name, nil)
	eventually(t, 15*time.Second, func() bool { _, ok := h.get(name); return !ok },
		func() string { return "the task was never removed" })
	for pid, marker := range escaped {
		if runs(pid, marker) {
			t.Errorf("process %d (%s) is alive after its task was deleted", pid, marker)
		}
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("the deleted task's cgroup %s is still there (%v)", d, err)
		}
	}
}

// TestBadResources: malformed or unsupported requests and limits are 400s
// that create nothing.
func TestBadResources(t *testing.T) {
	h := startHost(t)
	before := dirListing(t, h.dataDir)
	for _, tc := range []struct {
		name      string
		resources map[string]any
		want      string
	}{
		{"malformed quantity", map[string]any{"limits": map[string]any{"memory": "lots"}}, "quantities must match"},
		{"negative", map[string]any{"limits": map[string]any{"cpu": "-1"}}, "greater than or equal to 0"},
		{"request above limit", map[string]any{"limits": map[string]any{"memory": "32Mi"}, "requests": map[string]any{"memory": "64Mi"}}, "less than or equal to the memory limit"},
		{"ephemeral storage", map[string]any{"limits": map[string]any{"ephemeral-storage": "1Gi"}}, "only cpu and memory"},
		{"unknown resource", map[string]any{"requests": map[string]any{"nvidia.com/gpu": "1"}}, "only cpu and memory"},
		{"unknown field", map[string]any{"limit": map[string]any{"cpu": "1"}}, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/tasks", "/setTasks"} {
				var body any = resourcesTask("bad", "true", tc.resources)
				if path == "/setTasks" {
					body = []any{body}
				}
				code, out := h.do("POST", path, body)
				if code != 400 || !strings.Contains(string(out), tc.want) {
					t.Errorf("POST %s: %d %s; want 400 saying %q", path, code, out, tc.want)
				}
			}
		})
	}
	// The compatibility format takes the same field.
	code, out := h.do("POST", "/tasks", map[string]any{"name": "bad", "process": map[string]any{
		"command": []string{"true"}, "resources": map[string]any{"requests": map[string]any{"cpu": "2"}, "limits": map[string]any{"cpu": "1"}}}})
	if code != 400 || !strings.Contains(string(out), "less than or equal to the cpu limit") {
		t.Errorf("compatibility format: %d %s; want 400", code, out)
	}
	if after := dirListing(t, h.dataDir); after != before {
		t.Errorf("refused creates changed the data directory:\nbefore: %s\nafter:  %s", before, after)
	}
}

// TestCgroupsUnavailable: where the cgroup file systems are read-only (a
// container without delegation), the process runtime says so and tasks
// run, without limits; with --task-cgroups=required it does not come up,
// and /readyz says why.
func TestCgroupsUnavailable(t *testing.T) {
	for _, mode := range []string{"auto", "required"} {
		t.Run(mode, func(t *testing.T) {
			dir := dataDir(t)
			// A mount namespace of the host's own in which every cgroup
			// mount is read-only; unshare and sh exec, so the host keeps
			// the PID the harness knows.
			script := `for m in /sys/fs/cgroup/*/ /sys/fs/cgroup; do mount -o remount,bind,ro "$m" || exit 1; done; exec "$@"`
			h := &hostProc{t: t, dataDir: dir, exe: "unshare", argv: []string{
				"-m", "--propagation", "private", "sh", "-c", script, "sh",
				filepath.Join(binDir, "task-executor"),
				"--listen-addr", "127.0.0.1:0", "--data-dir", dir, "--log-format", "json", "--log-level", "debug",
				"--task-cgroups", mode,
			}}
			h.start()
			t.Cleanup(h.cleanup)
			var rts []api.Runtime
			if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
				t.Fatal(err)
			}
			var process *api.Runtime
			for i := range rts {
				if rts[i].Name == "process" || strings.Contains(rts[i].LastError, "cgroup") {
					process = &rts[i]
				}
			}
			if process == nil {
				t.Fatalf("no process runtime in %+v", rts)
			}
			if mode == "required" {
				if process.Healthy || !strings.Contains(process.LastError, "required") {
					t.Errorf("the process runtime with cgroups required and none to be had: %+v", *process)
				}
				code, body := h.do("GET", "/readyz", nil)
				if code != 503 || !strings.Contains(string(body), "cgroup") {
					t.Errorf("/readyz: %d %s; want 503 naming the cgroups", code, body)
				}
				return
			}
			if !process.Healthy || !strings.Contains(strings.Join(process.Warnings, " "), "without cgroups of their own") {
				t.Errorf("the process runtime without cgroups: %+v; want up, warning about it", *process)
			}
			if !strings.Contains(h.logs.String(), "without cgroups of their own") {
				t.Errorf("the start log does not say that tasks run without cgroups")
			}
			h.mustDo(201, "POST", "/tasks", resourcesTask("limited", "exit 0",
				map[string]any{"limits": map[string]any{"memory": "32Mi"}}))
			if term := h.waitTerminated("limited", 20*time.Second).Status.State.Terminated; term.Reason != "Succeeded" {
				t.Errorf("a task without its cgroup: %+v", term)
			}
		})
	}
}
