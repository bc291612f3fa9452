// Package kubelettest runs a real kubelet (hack/kubelet-up.sh: built from
// the Go module proxy and cached, standalone, with static pods) on the
// private containerd of internal/containerdtest, for tests of what happens
// beside a kubelet on a node. Everything it makes is under one temporary
// directory and a cgroup root of its own; hack/kubelet-down.sh removes it.
//
// A kubelet kills every pod on its runtime it does not know: two kubelets,
// or a kubelet and tests that make pods through CRI themselves, cannot
// share one containerd. A package using this one runs its kubelet tests
// one after the other, and no other kind of pod on its containerd.
//
// Where the kubelet cannot run the tests are skipped with a loud banner,
// unless TASK_EXECUTOR_REQUIRE_KUBELET=1, as CI sets, makes that a failure.
package kubelettest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
)

// RequireEnvVar set to 1 makes a kubelet that cannot run a test failure.
const RequireEnvVar = "TASK_EXECUTOR_REQUIRE_KUBELET"

// The first build of the kubelet takes minutes (hack/kubelet-build.sh).
const upTimeout = 20 * time.Minute

// Kubelet is a running kubelet.
type Kubelet struct {
	// Dir holds all it writes; Manifests its static pods.
	Dir, Manifests string
	// Healthz is its health endpoint.
	Healthz string
	// Root is its root directory (--root-dir), PodLogs its pods' logs.
	Root, PodLogs string
	// CgroupRoot is its cgroup root, in every hierarchy.
	CgroupRoot string

	t      testing.TB
	script string
}

// Start runs a kubelet on env's containerd for t; it is removed, with its
// pods' processes and cgroups, when t ends.
func Start(t testing.TB, env *containerdtest.Env) *Kubelet {
	t.Helper()
	root, err := containerdtest.RepoRoot()
	if err != nil {
		t.Fatalf("kubelettest: %v", err)
	}
	// Short: the kubelet's socket paths live under it.
	dir, err := os.MkdirTemp("/tmp", "kl")
	if err != nil {
		t.Fatalf("kubelettest: %v", err)
	}
	k := &Kubelet{Dir: dir, t: t}
	down := filepath.Join(root, "hack", "kubelet-down.sh")
	t.Cleanup(func() {
		if out, err := exec.Command("bash", down, dir).CombinedOutput(); err != nil {
			t.Errorf("kubelettest: kubelet-down.sh %s: %v\n%s", dir, err, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "kubelet-up.sh"), dir, env.Socket)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		why := fmt.Sprintf("running hack/kubelet-up.sh: %v\n%s", err, strings.TrimSpace(stderr.String()))
		if os.Getenv(RequireEnvVar) == "1" {
			t.Fatalf("kubelettest: %s=1 but the kubelet could not start: %s", RequireEnvVar, why)
		}
		t.Skip("\n" + banner(why))
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if key, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[key] = v
		}
	}
	k.Manifests, k.Healthz, k.Root = vars["KUBELET_MANIFESTS"], vars["KUBELET_HEALTHZ"], vars["KUBELET_ROOT"]
	k.PodLogs, k.CgroupRoot = vars["KUBELET_POD_LOGS"], vars["KUBELET_CGROUP_ROOT"]
	k.script = filepath.Join(dir, "start.sh")
	if k.Manifests == "" || k.Healthz == "" {
		t.Fatalf("kubelettest: kubelet-up.sh said %q", stdout.String())
	}
	t.Logf("kubelettest: kubelet up in %s (%s)", time.Since(start).Round(time.Millisecond), k.Healthz)
	return k
}

// PID is the kubelet's process.
func (k *Kubelet) PID() int {
	b, err := os.ReadFile(filepath.Join(k.Dir, "kubelet.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Restart stops the kubelet (SIGTERM, as systemd stops it) and starts it
// again, as a node's kubelet is restarted; its pods keep running.
func (k *Kubelet) Restart() {
	k.t.Helper()
	pid := k.PID()
	if pid <= 0 {
		k.t.Fatal("kubelettest: no kubelet PID")
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		k.t.Fatalf("kubelettest: stopping the kubelet: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			k.t.Fatalf("kubelettest: the kubelet (pid %d) did not stop", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out, err := exec.Command("bash", k.script).CombinedOutput(); err != nil {
		k.t.Fatalf("kubelettest: starting the kubelet again: %v\n%s", err, out)
	}
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

// AddStaticPod gives the kubelet pod as a static pod, in file name.
func (k *Kubelet) AddStaticPod(name string, pod *corev1.Pod) {
	k.t.Helper()
	b, err := json.Marshal(pod)
	if err != nil {
		k.t.Fatal(err)
	}
	// Written aside and renamed: the kubelet must never read half a file.
	tmp := filepath.Join(k.Dir, "."+name)
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		k.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(k.Manifests, name)); err != nil {
		k.t.Fatal(err)
	}
}

// RemoveStaticPod takes a static pod away: the kubelet deletes the pod.
func (k *Kubelet) RemoveStaticPod(name string) {
	k.t.Helper()
	if err := os.Remove(filepath.Join(k.Manifests, name)); err != nil {
		k.t.Fatal(err)
	}
}

// Log is the kubelet's log, for failure messages.
func (k *Kubelet) Log() string {
	b, _ := os.ReadFile(filepath.Join(k.Dir, "kubelet.log"))
	return string(b)
}

func banner(why string) string {
	line := strings.Repeat("*", 72)
	return fmt.Sprintf("%s\n*** KUBELET TESTS NOT RUN: %s\n*** Set %s=1 to make this a failure instead of a skip.\n%s\n",
		line, strings.ReplaceAll(strings.TrimSpace(why), "\n", "\n***   "), RequireEnvVar, line)
}
