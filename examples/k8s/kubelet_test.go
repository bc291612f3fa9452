package k8s

// container-mode-pod.yaml run for real: as a static pod of a real kubelet
// (internal/kubelettest) on a real containerd, the executor in its image
// built from this tree, tasks created over its HTTP API.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/internal/kubelettest"
	"github.com/opensandbox/task-executor/internal/podtest"
	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/client"
)

func TestMain(m *testing.M) { os.Exit(containerdtest.Main(m)) }

// node is a kubelet on a containerd, with the executor's image there.
type node struct {
	t   *testing.T
	env *containerdtest.Env
	k   *kubelettest.Kubelet
	rt  cri.RuntimeServiceClient
}

func startNode(t *testing.T) *node {
	t.Helper()
	env := containerdtest.Require(t)
	if err := podtest.EnsureExecutorImage(t.Context(), t, env); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &node{t: t, env: env, k: kubelettest.Start(t, env), rt: cri.NewRuntimeServiceClient(conn)}
}

// containerModePod is container-mode-pod.yaml as this node runs it, with
// what must differ here: the images (nothing can be pulled: main runs
// busybox, the executor the image of this tree), the node's network (no
// CNI here), the private containerd's socket, the offered volume in a
// temporary directory, and the API on 127.0.0.1 and a free port.
func (n *node) containerModePod() (*corev1.Pod, string) {
	t := n.t
	b, err := os.ReadFile("container-mode-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	if err := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096).Decode(&pod); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	data := t.TempDir()
	pod.Spec.HostNetwork = true
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		switch v.Name {
		case "containerd-socket":
			v.HostPath.Path = n.env.Socket
		case "data-volume":
			v.HostPath.Path = data
		}
	}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		c.ImagePullPolicy = corev1.PullIfNotPresent
		if c.Name == "main" {
			c.Image = n.env.BusyboxImage
			continue
		}
		c.Image = podtest.ExecutorImage
		for j, a := range c.Args {
			switch {
			case strings.HasPrefix(a, "--cri-socket="):
				c.Args[j] = "--cri-socket=" + n.env.Socket
			case strings.HasPrefix(a, "--listen-addr="):
				c.Args[j] = "--listen-addr=127.0.0.1:" + strconv.Itoa(port)
			case strings.HasPrefix(a, "--volume=data-volume="):
				c.Args[j] = "--volume=data-volume=" + data
			}
		}
		for j := range c.VolumeMounts {
			switch c.VolumeMounts[j].Name {
			case "containerd-socket":
				c.VolumeMounts[j].MountPath = n.env.Socket
			case "data-volume":
				c.VolumeMounts[j].MountPath = data
			}
		}
		c.Ports[0].ContainerPort = int32(port)
		c.ReadinessProbe.HTTPGet.Host = "127.0.0.1"
		c.ReadinessProbe.HTTPGet.Port = intstr.FromInt32(int32(port))
	}
	return &pod, "http://127.0.0.1:" + strconv.Itoa(port)
}

// podLogLines returns the lines of the node's pod logs that contain s.
func (n *node) podLogLines(s string) []string {
	var lines []string
	err := filepath.WalkDir(n.k.PodLogs, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, s) {
				lines = append(lines, l)
			}
		}
		return nil
	})
	if err != nil {
		n.t.Fatalf("cannot read the pods' logs: %v", err)
	}
	return lines
}

// freePort is a free port below the ephemeral range (32768 on), where no
// one else's connection takes it by chance.
func freePort(t *testing.T) int {
	t.Helper()
	for p := 20000 + os.Getpid()%10000; p < 32768; p += 7 {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// executor waits for the executor of the pod to answer and returns a
// client of it.
func (n *node) executor(url string) *client.Client {
	t := n.t
	c, err := client.New(url)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for c.Health(t.Context()) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the executor at %s did not answer; kubelet's log:\n%s", url, tail(n.k.Log(), 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// count counts what the runtime holds: containers and pod sandboxes.
func (n *node) count() (containers, sandboxes int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := n.rt.ListContainers(ctx, &cri.ListContainersRequest{})
	if err != nil {
		n.t.Fatal(err)
	}
	ps, err := n.rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		n.t.Fatal(err)
	}
	return len(cs.Containers), len(ps.Items)
}

// executorAttempts lists the attempts of the executor's container the
// runtime holds: a container restarted by the kubelet has a new one.
func (n *node) executorAttempts() []uint32 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := n.rt.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
		LabelSelector: map[string]string{"io.kubernetes.container.name": "task-executor"}}})
	if err != nil {
		n.t.Fatal(err)
	}
	var out []uint32
	for _, c := range cs.Containers {
		out = append(out, c.Metadata.Attempt)
	}
	return out
}

func containerTask(name string, command ...string) client.Task {
	return client.Task{Name: name, Spec: sdk.TaskSpec{Container: &corev1.Container{
		Name: "c", Image: "localhost/busybox:latest", ImagePullPolicy: corev1.PullIfNotPresent, Command: command,
	}}}
}

// securityContext: what a task's securityContext asks is what its process
// gets; what cannot be honoured, and a hostPath outside the allowed
// directories, are a 400 that creates nothing.
func (n *node) securityContext(c *client.Client) {
	t := n.t
	uid := int64(1000)
	who := containerTask("who", "sh", "-c", "id -u; grep CapEff /proc/self/status")
	who.Spec.Container.SecurityContext = &corev1.SecurityContext{RunAsUser: &uid, Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	if _, err := c.Create(t.Context(), who); err != nil {
		t.Fatal(err)
	}
	task, err := c.GetWait(t.Context(), "who", time.Minute)
	if err != nil || task.Status.State.Terminated == nil || task.Status.State.Terminated.ExitCode != 0 {
		t.Fatalf("who: %+v %v", task.Status.State, err)
	}
	r, err := c.Logs(t.Context(), "who", client.LogOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	r.Close()
	if got := strings.Join(strings.Fields(string(out)), " "); got != "1000 CapEff: 0000000000000000" {
		t.Errorf("runAsUser 1000 and all capabilities dropped gave %q", out)
	}

	// The downward API, through the executor's own pod.
	node := containerTask("node", "sh", "-c", `echo "$NODE"`)
	node.Spec.Container.Env = []corev1.EnvVar{{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}}
	if _, err := c.Create(t.Context(), node); err != nil {
		t.Fatal(err)
	}
	if task, err := c.GetWait(t.Context(), "node", time.Minute); err != nil || task.Status.State.Terminated == nil || task.Status.State.Terminated.ExitCode != 0 {
		t.Fatalf("node: %+v %v", task.Status.State, err)
	}
	if r, err := c.Logs(t.Context(), "node", client.LogOptions{}); err == nil {
		out, _ := io.ReadAll(r)
		r.Close()
		if string(out) != "kubelet-test\n" {
			t.Errorf("valueFrom spec.nodeName gave %q, want the kubelet's node name", out)
		}
	}

	ctrs, boxes := n.count()
	windows := containerTask("windows", "true")
	windows.Spec.Container.SecurityContext = &corev1.SecurityContext{WindowsOptions: &corev1.WindowsSecurityContextOptions{}}
	root := containerTask("node-root", "true")
	root.Spec.Container.VolumeMounts = []corev1.VolumeMount{{Name: "root", MountPath: "/host"}}
	root.Spec.Volumes = []corev1.Volume{{Name: "root", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}}}
	for _, bad := range []struct {
		task client.Task
		want string
	}{{windows, "windowsOptions"}, {root, "hostPath /"}} {
		_, err := c.Create(t.Context(), bad.task)
		var apiErr *client.APIError
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, bad.want) {
			t.Errorf("creating %s: %v, want a 400 naming %q", bad.task.Name, err, bad.want)
		}
		if _, err := c.Get(t.Context(), bad.task.Name); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
			t.Errorf("the refused %s exists: %v", bad.task.Name, err)
		}
	}
	if c2, b2 := n.count(); c2 > ctrs || b2 != boxes {
		t.Errorf("refused tasks made something: %d containers and %d sandboxes before, %d and %d after", ctrs, boxes, c2, b2)
	}
}

// TestContainerTasksBesideTheKubelet: container tasks live their whole
// life beside a kubelet whose housekeeping kills what it does not know
// (every ~2 s), through a restart of the kubelet, without the executor's
// pod ever being restarted; and when the kubelet deletes the pod, nothing
// of it or its tasks is left on the node.
func TestContainerTasksBesideTheKubelet(t *testing.T) {
	n := startNode(t)
	pod, url := n.containerModePod()
	n.k.AddStaticPod("executor.json", pod)
	c := n.executor(url)
	n.securityContext(c)
	// In the pod, the executor can tell when a container's log is complete
	// (a file lease on the node's file), which lets it report exits from
	// containerd's event.
	if lines := n.podLogLines("cannot tell when a container's log is complete"); len(lines) > 0 {
		t.Errorf("the executor cannot tell when logs are complete in its pod:\n%s", strings.Join(lines, "\n"))
	}

	const tasks = 20
	for i := range tasks {
		if _, err := c.Create(t.Context(), containerTask(fmt.Sprintf("t%d", i), "sleep", "60")); err != nil {
			t.Fatal(err)
		}
	}
	// Halfway, the kubelet restarts.
	time.Sleep(20 * time.Second)
	n.k.Restart()
	for i := range tasks {
		name := fmt.Sprintf("t%d", i)
		task, err := c.GetWait(t.Context(), name, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		term := task.Status.State.Terminated
		// containerd records a container's startedAt once its start call
		// returns, which under the whole suite's load came 2 s after the
		// process began: a sleep that ran its 60 s can show 58. One killed
		// early by the kubelet would not exit 0.
		if term == nil || term.Reason != sdk.ReasonSucceeded || term.FinishedAt.Sub(term.StartedAt.Time) < 50*time.Second {
			t.Fatalf("%s: %+v, want Succeeded after 60 s\nkubelet's log:\n%s", name, task.Status.State, tail(n.k.Log(), 40))
		}
	}
	if a := n.executorAttempts(); len(a) != 1 || a[0] != 0 {
		t.Fatalf("the executor's container attempts: %v, want only the first (never restarted)", a)
	}
	if strings.Contains(n.k.Log(), "orphaned pod") {
		t.Errorf("the kubelet cleaned up an orphaned pod:\n%s", tail(n.k.Log(), 40))
	}

	// Tasks still running when the pod goes.
	for i := range 3 {
		if _, err := c.Create(t.Context(), containerTask(fmt.Sprintf("long%d", i), "sleep", "600")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		deadline := time.Now().Add(time.Minute)
		for {
			task, err := c.Get(t.Context(), fmt.Sprintf("long%d", i))
			if err == nil && task.Status.State.Running != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("long%d does not run: %+v %v", i, task.Status.State, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	n.k.RemoveStaticPod("executor.json")
	removed := time.Now()
	// The kubelet stops the pod's containers within its grace period (the
	// runtime stops the tasks with the pod's sandbox), and its garbage
	// collection, once a minute, removes what is left of a deleted pod.
	grace := 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	bound := grace + time.Minute + 15*time.Second
	for {
		ctrs, boxes := n.count()
		pods, _ := filepath.Glob(filepath.Join(n.k.Root, "pods", "*"))
		if ctrs == 0 && boxes == 0 && len(pods) == 0 {
			t.Logf("the pod, its tasks and its data were gone %s after its deletion", time.Since(removed).Round(time.Second))
			break
		}
		if time.Since(removed) > bound {
			t.Fatalf("%s after the pod's deletion the runtime holds %d containers and %d sandboxes, the kubelet %d pod directories\nkubelet's log:\n%s",
				bound, ctrs, boxes, len(pods), tail(n.k.Log(), 40))
		}
		time.Sleep(time.Second)
	}
}
