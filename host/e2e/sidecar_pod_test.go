package e2e

// Sidecar mode as deployed: examples/k8s/sidecar-pod.yaml run as a real
// pod on a real containerd (internal/podtest), the executor in its image,
// tasks created over its HTTP API. What a task gets is compared with what
// the platform gives a process started in main by the runtime (CRI
// ExecSync: `crictl exec`, `kubectl exec`).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/internal/podtest"
	"github.com/opensandbox/task-executor/internal/seccomp"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/client"
)

// mainVariants are the main containers the parity tests run: as the
// manifest has it (root, no seccomp filter), root under the runtime's
// default seccomp profile (installed before the task's capabilities are
// dropped), and as a Kubernetes "restricted" pod runs it.
var mainVariants = []struct {
	name string
	sc   *corev1.SecurityContext
}{
	{"root", nil},
	{"root with RuntimeDefault seccomp", &corev1.SecurityContext{SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}}},
	{"uid 1000 restricted", restricted()},
}

func restricted() *corev1.SecurityContext {
	uid, no, yes := int64(1000), false, true
	return &corev1.SecurityContext{
		RunAsUser: &uid, RunAsNonRoot: &yes, AllowPrivilegeEscalation: &no,
		Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// sidecarPod is a pod of the manifest with a client of its executor.
type sidecarPod struct {
	*podtest.Pod
	t *testing.T
	c *client.Client
}

func startSidecarPod(t *testing.T, opts ...podtest.Option) *sidecarPod {
	t.Helper()
	env := containerdtest.Require(t)
	p := podtest.Start(t.Context(), t, env, opts...)
	c, err := client.New(p.URL())
	if err != nil {
		t.Fatal(err)
	}
	return &sidecarPod{Pod: p, t: t, c: c}
}

// create creates a task running script with sh in main.
func (p *sidecarPod) create(name, script string) client.Task {
	p.t.Helper()
	task, err := p.c.Create(p.t.Context(), client.Task{Name: name, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sh", "-c", script}}}})
	if err != nil {
		p.t.Fatalf("creating %s: %v", name, err)
	}
	return task
}

// wait waits for a task to end.
func (p *sidecarPod) wait(name string) client.Task {
	p.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		task, err := p.c.GetWait(p.t.Context(), name, 10*time.Second)
		if err != nil {
			p.t.Fatalf("GET %s: %v", name, err)
		}
		if task.Terminated() {
			return task
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("task %s did not end: %+v\nexecutor's log:\n%s", name, task.Status.State, p.Logs(podtest.ExecutorContainer))
		}
	}
}

// running waits for a task to run.
func (p *sidecarPod) running(name string) client.Task {
	p.t.Helper()
	var task client.Task
	eventually(p.t, 30*time.Second, func() bool {
		var err error
		task, err = p.c.Get(p.t.Context(), name)
		return err == nil && task.Status.State.Running != nil
	}, func() string { return fmt.Sprintf("task %s is %+v", name, task.Status.State) })
	return task
}

// output is a task's standard output.
func (p *sidecarPod) output(name string) string {
	p.t.Helper()
	r, err := p.c.Logs(p.t.Context(), name, client.LogOptions{Stream: "stdout"})
	if err != nil {
		p.t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		p.t.Fatal(err)
	}
	return string(b)
}

// run runs script as a task and in main through the runtime (ExecSync), and
// returns both outputs. A task has a cgroup of its own below main's memory
// cgroup (and main's others at that path): in what it prints of
// /proc/self/cgroup that cgroup is checked and cut back to main's.
func (p *sidecarPod) run(name, script string) (task, exec string) {
	p.t.Helper()
	p.create(name, script)
	if st := p.wait(name).Status.State.Terminated; st.ExitCode != 0 {
		p.t.Fatalf("task %s: %+v", name, st)
	}
	res, err := p.Exec(p.t.Context(), podtest.MainContainer, "sh", "-c", script)
	if err != nil || res.ExitCode != 0 {
		p.t.Fatalf("exec in main: %v, %+v", err, res)
	}
	task = p.output(name)
	own := regexp.MustCompile(`(?m)^([0-9]+:[^:]*memory[^:]*:.*)/task-executor-[0-9a-f]+-nsenter/` + regexp.QuoteMeta(name) + `$`)
	if strings.Contains(script, "/proc/self/cgroup") && !own.MatchString(task) {
		p.t.Fatalf("task %s has no memory cgroup of its own below main's:\n%s", name, task)
	}
	below := regexp.MustCompile(`/task-executor-[0-9a-f]+-nsenter/` + regexp.QuoteMeta(name) + `$`)
	lines := strings.Split(task, "\n")
	for i, l := range lines {
		lines[i] = below.ReplaceAllString(l, "")
	}
	return strings.Join(lines, "\n"), string(res.Stdout)
}

// nodePID finds, on the node, the process a pod's PID namespace (the one
// process nsOf is in) calls pid.
func nodePID(t *testing.T, nsOf, pid int) int {
	t.Helper()
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", nsOf))
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", n)); ns != want {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", n))
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(strings.TrimPrefix(line, "NSpid:")); strings.HasPrefix(line, "NSpid:") && len(f) > 1 && f[len(f)-1] == strconv.Itoa(pid) {
				return n
			}
		}
	}
	t.Fatalf("no process is %d in the pod's PID namespace", pid)
	return 0
}

// taskPID is a running task's PID as the pod sees it, from its shim's
// record in the data directory.
func (p *sidecarPod) taskPID(name string) int {
	p.t.Helper()
	var pid int
	eventually(p.t, 10*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(p.DataDir(), name, "shim-state.json"))
		var st struct{ PID int }
		if err != nil || json.Unmarshal(b, &st) != nil {
			return false
		}
		pid = st.PID
		return pid > 0
	}, func() string { return "the task's shim has recorded no PID" })
	return pid
}

// identityScript prints what makes a process's identity and confinement,
// and what it can do that seccomp decides.
const identityScript = `id
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters|Umask):' /proc/self/status
cat /proc/self/cgroup
for ns in mnt uts ipc net pid cgroup user; do echo "$ns $(readlink /proc/self/ns/$ns)"; done
echo "lsm $(cat /proc/self/attr/current 2>/dev/null)"
unshare -U true 2>/dev/null; echo "unshare=$?"
pwd`

// TestSidecarTaskIsLikeExecInMain: a task's identity, capabilities,
// no_new_privs, seccomp, cgroups and namespaces are those of a process the
// runtime starts in main (ExecSync), for main as root and as a restricted
// user; and its seccomp filter is main's, instruction for instruction.
func TestSidecarTaskIsLikeExecInMain(t *testing.T) {
	for _, v := range mainVariants {
		t.Run(v.name, func(t *testing.T) {
			p := startSidecarPod(t, podtest.WithMainSecurityContext(v.sc))
			task, exec := p.run("identity", identityScript)
			if task != exec {
				t.Fatalf("a task differs from a process started in main by the runtime\ntask:\n%s\nexec:\n%s", task, exec)
			}
			if !strings.Contains(task, "/"+p.ContainerID(podtest.MainContainer)+"\n") {
				t.Fatalf("the task is not in main's cgroup %s:\n%s", p.ContainerID(podtest.MainContainer), task)
			}
			if v.sc == nil && !strings.Contains(task, "uid=0(root)") || v.sc != nil && v.sc.RunAsUser != nil && !strings.Contains(task, "uid=1000") {
				t.Fatalf("main does not run as the test meant:\n%s", task)
			}

			p.create("long", "sleep 600")
			p.running("long")
			mainPID, err := p.PID(t.Context(), podtest.MainContainer)
			if err != nil {
				t.Fatal(err)
			}
			taskPID := nodePID(t, mainPID, p.taskPID("long"))
			want, err := seccomp.ReadFilters(mainPID)
			if err != nil {
				t.Fatal(err)
			}
			got, err := seccomp.ReadFilters(taskPID)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("the task's seccomp filters (%d) are not main's (%d)", len(got), len(want))
			}
			if v.sc != nil && v.sc.SeccompProfile != nil && len(want) == 0 {
				t.Fatal("main has no seccomp filter under RuntimeDefault")
			}
		})
	}
}

// escapeScript tries what a task running with the executor's privileges
// could do: mount, enter the executor's mount namespace, write beside its
// executable, read its data directory, and ask the API for a task in the
// executor's own container.
const escapeScript = `x=$(for p in /proc/[0-9]*; do [ "$(tr '\0' '\n' < $p/cmdline 2>/dev/null | head -1)" = /usr/local/bin/task-executor ] && echo ${p#/proc/}; done | head -1)
echo "executor ${x:+found}"
mount -t tmpfs none /mnt 2>&1; echo "mount=$?"
nsenter -t "$x" -m ls /var/lib/sandbox/tasks 2>&1; echo "nsenter=$?"
echo evil 2>&1 > /proc/$x/root/usr/local/bin/evil; echo "write=$?"
ls /proc/$x/root/var/lib/sandbox/tasks 2>&1; echo "read=$?"
wget -q -O- --header 'Content-Type: application/json' --post-data '{"name":"escape","spec":{"runtime":"process","process":{"command":["id"]}}}' "$API/tasks" 2>&1; echo "api=$?"
true`

// TestSidecarTaskCannotEscape: what fails in main fails in a task, with the
// same errors.
func TestSidecarTaskCannotEscape(t *testing.T) {
	for _, v := range mainVariants {
		t.Run(v.name, func(t *testing.T) {
			p := startSidecarPod(t, podtest.WithMainSecurityContext(v.sc))
			script := "API=" + p.URL() + "\n" + escapeScript
			task, exec := p.run("escape-attempt", script)
			if task != exec {
				t.Fatalf("a task differs from a process started in main by the runtime\ntask:\n%s\nexec:\n%s", task, exec)
			}
			if !strings.Contains(task, "executor found") {
				t.Fatalf("the executor's process was not found:\n%s", task)
			}
			for _, step := range []string{"mount", "nsenter", "write", "read", "api"} {
				if strings.Contains(task, step+"=0\n") {
					t.Errorf("%s succeeded:\n%s", step, task)
				}
			}
			ls, err := p.Exec(t.Context(), podtest.ExecutorContainer, "ls", "/usr/local/bin")
			if err != nil || strings.Contains(string(ls.Stdout), "evil") || !strings.Contains(string(ls.Stdout), "task-executor") {
				t.Errorf("the executable's directory: %q, %v", ls.Stdout, err)
			}
			if _, err := p.c.Get(t.Context(), "escape"); !isNotFound(err) {
				t.Errorf("the task asked for the process runtime exists: %v", err)
			}
		})
	}
}

func isNotFound(err error) bool {
	var apiErr *client.APIError
	return errors.As(err, &apiErr) && apiErr.StatusCode == 404
}

// TestSidecarTaskOOMKilledInMain: main's memory limit bounds a task, and
// the kernel's kill is reported as Kubernetes reports a container's.
func TestSidecarTaskOOMKilledInMain(t *testing.T) {
	p := startSidecarPod(t, podtest.WithMainMemoryLimit(64<<20))
	const hog = "exec dd if=/dev/zero of=/dev/null bs=200M count=1"
	p.create("hog", hog)
	term := p.wait("hog").Status.State.Terminated
	if term.Reason != sdk.ReasonOOMKilled || term.ExitCode != 137 {
		t.Fatalf("task: %+v, want OOMKilled 137", term)
	}
	res, err := p.Exec(t.Context(), podtest.MainContainer, "sh", "-c", hog)
	if err != nil || res.ExitCode != 137 {
		t.Fatalf("the same in main: %+v, %v; want it killed too", res, err)
	}
	p.create("modest", "exec dd if=/dev/zero of=/dev/null bs=16M count=1")
	if term := p.wait("modest").Status.State.Terminated; term.Reason != sdk.ReasonSucceeded {
		t.Fatalf("a task within the limit: %+v", term)
	}
}

// TestSidecarTaskOwnLimits: in a main without a memory limit, a task's own
// limits.memory holds (its cgroup is below main's): OOMKilled, while the
// same in main runs through; the task's usage is in its message.
func TestSidecarTaskOwnLimits(t *testing.T) {
	p := startSidecarPod(t)
	const hog = "exec dd if=/dev/zero of=/dev/null bs=100M count=1"
	_, err := p.c.Create(t.Context(), client.Task{Name: "limited", Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{
		Command:   []string{"sh", "-c", hog},
		Resources: &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	term := p.wait("limited").Status.State.Terminated
	if term.Reason != sdk.ReasonOOMKilled || term.ExitCode != 137 || !strings.Contains(term.Message, "CPU seconds") {
		t.Fatalf("task: %+v, want OOMKilled 137, its usage told", term)
	}
	res, err := p.Exec(t.Context(), podtest.MainContainer, "sh", "-c", hog)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("the same in main: %+v, %v; want it to run through", res, err)
	}
}

// TestSidecarTasksOutliveTheExecutor: 20 running tasks survive a restart of
// the executor's container (graceful, and after a kill -9 of the executor);
// the next executor reports their exits with their codes and finishedAt,
// and stops the others on DELETE.
func TestSidecarTasksOutliveTheExecutor(t *testing.T) {
	const n = 20
	for _, how := range []string{"container restarted", "executor killed"} {
		t.Run(how, func(t *testing.T) {
			p := startSidecarPod(t)
			started := map[string]time.Time{}
			for i := 1; i <= n; i++ {
				p.create(fmt.Sprintf("t%d", i), fmt.Sprintf("while [ ! -e /tmp/go-%d ]; do sleep 0.05; done; exit %d", i, i))
			}
			for i := 1; i <= n; i++ {
				name := fmt.Sprintf("t%d", i)
				started[name] = p.running(name).Status.State.Running.StartedAt.Time
			}
			if how == "executor killed" {
				pid, err := p.PID(t.Context(), podtest.ExecutorContainer)
				if err != nil {
					t.Fatal(err)
				}
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
			old := p.ContainerID(podtest.ExecutorContainer)
			if err := p.RestartContainer(t.Context(), podtest.ExecutorContainer); err != nil {
				t.Fatal(err)
			}
			if p.ContainerID(podtest.ExecutorContainer) == old {
				t.Fatal("the executor's container was not replaced")
			}
			for i := 1; i <= n; i++ {
				name := fmt.Sprintf("t%d", i)
				task, err := p.c.Get(t.Context(), name)
				if err != nil || task.Status.State.Running == nil || !task.Status.State.Running.StartedAt.Time.Equal(started[name]) {
					t.Fatalf("after the restart %s is %+v (%v), want running since %v", name, task.Status.State, err, started[name])
				}
			}
			// Half end on their own, with their codes; the others are deleted.
			trigger := time.Now().Truncate(time.Second)
			var touch []string
			for i := 1; i <= n/2; i++ {
				touch = append(touch, fmt.Sprintf("/tmp/go-%d", i))
			}
			if res, err := p.Exec(t.Context(), podtest.MainContainer, append([]string{"touch"}, touch...)...); err != nil || res.ExitCode != 0 {
				t.Fatalf("touch: %+v %v", res, err)
			}
			for i := 1; i <= n/2; i++ {
				name := fmt.Sprintf("t%d", i)
				term := p.wait(name).Status.State.Terminated
				if term.ExitCode != int32(i) || term.FinishedAt.Time.Before(trigger) || term.FinishedAt.Time.After(time.Now()) || !term.StartedAt.Time.Equal(started[name]) {
					t.Errorf("%s: %+v, want exit code %d, started %v, finished after %v", name, term, i, started[name], trigger)
				}
			}
			grace := time.Second
			for i := n/2 + 1; i <= n; i++ {
				if err := p.c.Delete(t.Context(), fmt.Sprintf("t%d", i), &grace); err != nil {
					t.Fatal(err)
				}
			}
			for i := n/2 + 1; i <= n; i++ {
				name := fmt.Sprintf("t%d", i)
				eventually(t, 30*time.Second, func() bool {
					_, err := p.c.Get(t.Context(), name)
					return isNotFound(err)
				}, func() string { return name + " is still there after its DELETE" })
			}
			res, err := p.Exec(t.Context(), podtest.MainContainer, "ps", "-o", "args")
			if err != nil || strings.Contains(string(res.Stdout), "go-") {
				t.Fatalf("tasks left running in main after their DELETE: %s (%v)", res.Stdout, err)
			}
		})
	}
}

// TestSidecarTaskEndsWithMain: a task running in main when main restarts
// ends, and says why; a new task runs in the new main.
func TestSidecarTaskEndsWithMain(t *testing.T) {
	p := startSidecarPod(t)
	p.create("old", "sleep 600")
	p.running("old")
	if err := p.RestartContainer(t.Context(), podtest.MainContainer); err != nil {
		t.Fatal(err)
	}
	term := p.wait("old").Status.State.Terminated
	if term.Reason != "MainContainerRestarted" || term.ExitCode != 137 {
		t.Fatalf("the task in the old main: %+v, want MainContainerRestarted 137", term)
	}
	task, exec := p.run("new", "cat /proc/self/cgroup; readlink /proc/self/ns/mnt")
	if task != exec || !strings.Contains(task, p.ContainerID(podtest.MainContainer)) {
		t.Fatalf("a new task is not in the new main (%s):\ntask:\n%s\nexec:\n%s", p.ContainerID(podtest.MainContainer), task, exec)
	}
}

// TestSidecarRefusesLessConfinedTasks: an executor that cannot read main's
// seccomp filter (it runs under one itself) says so at start and refuses
// tasks, unless the operator allows them.
func TestSidecarRefusesLessConfinedTasks(t *testing.T) {
	filtered := podtest.WithExecutorSeccompProfile(corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault})
	t.Run("refused", func(t *testing.T) {
		p := startSidecarPod(t, podtest.WithMainSecurityContext(restricted()), filtered)
		rts, err := getJSON[[]struct {
			Name     string
			Warnings []string
		}](t.Context(), p.URL()+"/runtimes")
		if err != nil {
			t.Fatal(err)
		}
		warned := false
		for _, rt := range rts {
			warned = warned || rt.Name == "nsenter" && strings.Contains(strings.Join(rt.Warnings, " "), "seccomp")
		}
		if !warned {
			t.Errorf("GET /runtimes does not warn about seccomp: %+v", rts)
		}
		p.create("refused", "id")
		term := p.wait("refused").Status.State.Terminated
		if term.Reason != sdk.ReasonStartError || term.ExitCode != 128 || !strings.Contains(term.Message, "seccomp") ||
			!strings.Contains(term.Message, "--allow-sidecar-tasks-more-privileged-than-main") {
			t.Fatalf("task: %+v, want a StartError naming seccomp and the flag", term)
		}
	})
	t.Run("allowed", func(t *testing.T) {
		p := startSidecarPod(t, podtest.WithMainSecurityContext(restricted()), filtered,
			podtest.WithExecutorArgs("--allow-sidecar-tasks-more-privileged-than-main"))
		p.create("allowed", "id -u")
		if term := p.wait("allowed").Status.State.Terminated; term.Reason != sdk.ReasonSucceeded {
			t.Fatalf("task: %+v", term)
		}
		if out := strings.TrimSpace(p.output("allowed")); out != "1000" {
			t.Fatalf("the task ran as %q, want main's user 1000", out)
		}
	})
}

// getJSON GETs url and decodes its JSON answer.
func getJSON[T any](ctx context.Context, url string) (T, error) {
	var v T
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return v, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// TestSidecarTaskDownwardAPI: a task's env may name fields of the pod
// (valueFrom.fieldRef), as the controller's templates do; one the executor
// cannot resolve ends that task, saying so, and no other.
func TestSidecarTaskDownwardAPI(t *testing.T) {
	p := startSidecarPod(t)
	fieldEnv := func(path string) []corev1.EnvVar {
		return []corev1.EnvVar{{Name: "V", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}}
	}
	for name, path := range map[string]string{"pod-name": "metadata.name", "labels": "metadata.labels['app']"} {
		task := client.Task{Name: name, Spec: sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sh", "-c", `echo "$V"`}, Env: fieldEnv(path)}}}
		if _, err := p.c.Create(t.Context(), task); err != nil {
			t.Fatal(err)
		}
	}
	if term := p.wait("pod-name").Status.State.Terminated; term.Reason != sdk.ReasonSucceeded || p.output("pod-name") != "sandbox\n" {
		t.Errorf("pod-name: %+v, printed %q; want the pod's name", term, p.output("pod-name"))
	}
	if term := p.wait("labels").Status.State.Terminated; term.Reason != sdk.ReasonStartError || !strings.Contains(term.Message, "metadata.labels['app']") {
		t.Errorf("labels: %+v, want a StartError naming the field", term)
	}
}
