package nsenter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
	"github.com/opensandbox/task-executor/sdk/shim"
)

const sampleStatus = `Name:	sleep
Umask:	0022
State:	S (sleeping)
Uid:	1000	1001	1002	1001
Gid:	0	0	0	0
Groups:	0 10 
NoNewPrivs:	1
Seccomp:	2
Seccomp_filters:	1
CapInh:	0000000000000000
CapPrm:	00000000a80425fb
CapEff:	00000000a80425fb
CapBnd:	00000000a80425fb
CapAmb:	0000000000000000
`

func TestParseStatus(t *testing.T) {
	umask := uint32(0o22)
	cases := []struct {
		name    string
		in      string
		want    status
		wantErr string
	}{
		{"complete", sampleStatus, status{
			uid: [3]uint32{1000, 1001, 1002}, gid: [3]uint32{}, groups: []uint32{0, 10}, noNewPrivs: true, umask: &umask,
			seccompMode: 2, seccompFilters: 1,
			caps: shim.Capabilities{Permitted: 0xa80425fb, Effective: 0xa80425fb, Bounding: 0xa80425fb},
		}, ""},
		{"no groups, no umask, no filter count", strings.NewReplacer("Groups:\t0 10 \n", "Groups:\t\n", "Umask:\t0022\n", "", "Seccomp_filters:\t1\n", "").Replace(sampleStatus), status{
			uid: [3]uint32{1000, 1001, 1002}, noNewPrivs: true, seccompMode: 2, seccompFilters: 1,
			caps: shim.Capabilities{Permitted: 0xa80425fb, Effective: 0xa80425fb, Bounding: 0xa80425fb},
		}, ""},
		{"a capability set missing", strings.Replace(sampleStatus, "CapAmb:\t0000000000000000\n", "", 1), status{}, "no CapAmb field"},
		{"no seccomp field", strings.Replace(sampleStatus, "Seccomp:\t2\n", "", 1), status{}, "no Seccomp field"},
		{"a bad ID", strings.Replace(sampleStatus, "1002", "x", 1), status{}, "Uid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStatus([]byte(c.in))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got.uid, got.gid, got.groups, got.caps, got.noNewPrivs, got.seccompMode, got.seccompFilters) !=
				fmt.Sprint(c.want.uid, c.want.gid, c.want.groups, c.want.caps, c.want.noNewPrivs, c.want.seccompMode, c.want.seccompFilters) ||
				(got.umask == nil) != (c.want.umask == nil) || (got.umask != nil && *got.umask != *c.want.umask) {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestCredentialsWithinTheExecutors(t *testing.T) {
	const (
		def      = 0xa80425fb // the runtime's default set
		sysAdmin = 1 << capSysAdmin
		netAdmin = 1 << 12
	)
	self := status{caps: shim.Capabilities{Bounding: def | sysAdmin, Permitted: def | sysAdmin, Effective: def | sysAdmin}}
	cases := []struct {
		name        string
		main        shim.Capabilities
		want        shim.Capabilities
		wantMissing uint64
	}{
		{"root with the defaults", shim.Capabilities{Bounding: def, Permitted: def, Effective: def},
			shim.Capabilities{Bounding: def, Permitted: def, Effective: def}, 0},
		{"everything dropped", shim.Capabilities{}, shim.Capabilities{}, 0},
		{"a capability the executor lacks", shim.Capabilities{Bounding: def | netAdmin, Permitted: def | netAdmin, Effective: def | netAdmin},
			shim.Capabilities{Bounding: def, Permitted: def, Effective: def}, netAdmin},
		{"inheritable and ambient within the bounding set", shim.Capabilities{Bounding: 1 << 10, Permitted: 1 << 10, Effective: 1 << 10, Inheritable: 1<<10 | 1<<11, Ambient: 1 << 10},
			shim.Capabilities{Bounding: 1 << 10, Permitted: 1 << 10, Effective: 1 << 10, Inheritable: 1 << 10, Ambient: 1 << 10}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cred, missing := credentials(status{uid: [3]uint32{7, 7, 7}, caps: c.main}, self)
			if cred.Capabilities != c.want || missing != c.wantMissing || cred.UID != [3]uint32{7, 7, 7} {
				t.Fatalf("got %+v (missing %x), want %+v (missing %x)", cred.Capabilities, missing, c.want, c.wantMissing)
			}
		})
	}
	if got := capList(netAdmin | sysAdmin); got != "NET_ADMIN, SYS_ADMIN" {
		t.Errorf("capList: %q", got)
	}
}

func TestLSMTransition(t *testing.T) {
	cases := []struct {
		name       string
		main, self lsm
		want       lsm
	}{
		{"none enforced", lsm{}, lsm{}, lsm{}},
		{"main confined, executor unconfined", lsm{apparmor: "cri-containerd.apparmor.d"}, lsm{apparmor: "unconfined"}, lsm{apparmor: "cri-containerd.apparmor.d"}},
		{"same profile: inherited", lsm{apparmor: "p"}, lsm{apparmor: "p"}, lsm{}},
		{"main unconfined: nothing lifts the executor's own", lsm{apparmor: "unconfined"}, lsm{apparmor: "p"}, lsm{}},
		{"SELinux labels differ", lsm{selinux: "system_u:system_r:container_t:s0:c1,c2"}, lsm{selinux: "system_u:system_r:spc_t:s0"}, lsm{selinux: "system_u:system_r:container_t:s0:c1,c2"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := lsmTransition(c.main, c.self); got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
	for label, want := range map[string]string{
		"cri-containerd.apparmor.d (enforce)\n": "cri-containerd.apparmor.d",
		"unconfined\n":                          "unconfined",
		"docker-default (complain)":             "docker-default",
	} {
		if got := apparmorProfile(label); got != want {
			t.Errorf("apparmorProfile(%q) = %q, want %q", label, got, want)
		}
	}
}

// TestHierarchyKeys: each hierarchy of /proc/<pid>/cgroup gets a mount of
// its own, named by its controllers (v2: none).
func TestHierarchyKeys(t *testing.T) {
	hs, err := cgroups.ParseMemberships([]byte("12:cpu,cpuacct:/kubepods/pod1/c1\n1:name=systemd:/kubepods/pod1/c1\n0::/kubepods/pod1/c1\n"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, h := range hs {
		keys = append(keys, fmt.Sprintf("%s|%v|%s", hierarchyKey(h), h.V2, h.Path))
	}
	want := []string{"cpu,cpuacct|false|/kubepods/pod1/c1", "name=systemd|false|/kubepods/pod1/c1", "|true|/kubepods/pod1/c1"}
	if !slices.Equal(keys, want) {
		t.Fatalf("got %v, want %v", keys, want)
	}
}

// removeCgroupTree removes cgroup dir and the cgroups below it.
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return os.Remove(dir)
}

// memoryCgroup makes a memory cgroup below this test's own, limited to
// limit bytes, moves the container's main process into it, and removes it
// when the test ends (the container ended first).
func memoryCgroup(t *testing.T, c *runtimetest.Container, limit int64) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	hs, err := cgroups.ParseMemberships(b)
	if err != nil {
		t.Fatal(err)
	}
	var dir, limitFile string
	for _, h := range hs {
		switch {
		case slices.Contains(h.Controllers, "memory"):
			dir, limitFile = filepath.Join("/sys/fs/cgroup/memory", h.Path), "memory.limit_in_bytes"
		case h.V2 && dir == "":
			dir, limitFile = filepath.Join("/sys/fs/cgroup", h.Path), "memory.max"
		}
	}
	if dir == "" {
		t.Fatalf("no memory cgroup in %q", b)
	}
	dir = filepath.Join(dir, fmt.Sprintf("nsenter-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Stop()
		deadline := time.Now().Add(20 * time.Second)
		// Deepest first, as a container runtime removes a container's
		// cgroup: the tasks' cgroups are below it.
		for err := removeCgroupTree(dir); err != nil && !os.IsNotExist(err); err = removeCgroupTree(dir) {
			if time.Now().After(deadline) {
				t.Errorf("removing %s: %v", dir, err)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	for file, v := range map[string]string{limitFile: strconv.FormatInt(limit, 10), "cgroup.procs": strconv.Itoa(c.Pid)} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			t.Fatalf("writing %s: %v", file, err)
		}
	}
	return dir
}

// confinedMain is the wrapper of a main container running as a
// Kubernetes "restricted" pod does: another user, no capabilities,
// no_new_privs.
var confinedMain = []string{"setpriv", "--reuid=1000", "--regid=1000", "--groups=1000,5", "--inh-caps=-all", "--bounding-set=-all", "--nnp"}

// statusLines are the /proc/<pid>/status lines that make a process's
// identity, as the tests compare them.
func statusLines(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Umask":
			out[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	if len(out) < 10 {
		t.Fatalf("too few identity lines in %q", b)
	}
	return out
}

// TestTaskGetsMainsIdentity: a task runs as the main container's process
// does (user, groups, capabilities, no_new_privs) and in its cgroups, not
// as the executor.
func TestTaskGetsMainsIdentity(t *testing.T) {
	name := fmt.Sprintf("ident-%d", os.Getpid())
	c := runtimetest.StartContainerAs(t, "ident-box", confinedMain, "SANDBOX_MAIN_CONTAINER="+name)
	cg := memoryCgroup(t, c, 256<<20)
	rt := launchRuntime(t, name)
	task := newTask(t, "who", `cat /proc/self/status; echo ---; cat /proc/self/cgroup; echo ---; touch /etc/never 2>&1 && echo wrote-etc; true`)
	if _, err := rt.Start(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if term := waitTerminated(t, rt, task.Name); term.ExitCode != 0 {
		t.Fatalf("task: %+v", term)
	}
	out, err := os.ReadFile(filepath.Join(task.Dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(string(out), "---\n")
	if len(parts) != 3 {
		t.Fatalf("output: %s", out)
	}
	mainStatus, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Pid))
	mainCgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", c.Pid))
	got, want := statusLines(t, []byte(parts[0])), statusLines(t, mainStatus)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("task's identity\n%v\nmain's\n%v", got, want)
	}
	if want["Uid"] != "1000 1000 1000 1000" || want["CapBnd"] != "0000000000000000" {
		t.Fatalf("the main process is not confined as the test meant: %v", want)
	}
	// Main's cgroups, but for its memory cgroup (and those at the same
	// path), where the task has one of its own below main's.
	own := regexp.MustCompile(`/task-executor-[0-9a-f]+-nsenter/` + task.Name + `\n`)
	if own.ReplaceAllString(parts[1], "\n") != string(mainCgroup) || !strings.Contains(parts[1], filepath.Base(cg)+"/task-executor-") {
		t.Errorf("task's cgroups\n%s\nmain's\n%s\nwant main's, with a cgroup of the task's own below main's memory cgroup", parts[1], mainCgroup)
	}
	if strings.Contains(parts[2], "wrote-etc") {
		t.Error("the task could write to /etc, which main's user cannot")
	}
}

// TestOOMKilledInMainsCgroup: a task that needs more memory than the main
// container's limit is killed by the kernel and reported OOMKilled.
func TestOOMKilledInMainsCgroup(t *testing.T) {
	name := fmt.Sprintf("oom-%d", os.Getpid())
	c := runtimetest.StartContainer(t, "oom-box", "SANDBOX_MAIN_CONTAINER="+name)
	memoryCgroup(t, c, 32<<20)
	rt := launchRuntime(t, name)
	task := newTask(t, "hog", "exec dd if=/dev/zero of=/dev/null bs=100M count=1")
	if _, err := rt.Start(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	if term := waitTerminated(t, rt, task.Name); term.Reason != sdk.ReasonOOMKilled || term.ExitCode != 137 {
		t.Fatalf("task: %+v, want OOMKilled 137", term)
	}
}

// TestMainGoneEndsTask: a task still running when the main container's
// process ends is ended with it, and says so.
func TestMainGoneEndsTask(t *testing.T) {
	name := fmt.Sprintf("gone-%d", os.Getpid())
	c := runtimetest.StartContainer(t, "gone-box", "SANDBOX_MAIN_CONTAINER="+name)
	rt := launchRuntime(t, name)
	task := newTask(t, "long", "sleep 600")
	st, err := rt.Start(context.Background(), task)
	if err != nil || st.State.Running == nil {
		t.Fatalf("Start: %+v, %v", st, err)
	}
	c.Stop()
	term := waitTerminated(t, rt, task.Name)
	if term.Reason != reasonMainRestarted || term.ExitCode != 137 || !strings.Contains(term.Message, "container") {
		t.Fatalf("task: %+v, want %s 137", term, reasonMainRestarted)
	}
}

// TestTaskLimitsBelowMains: a task's own memory limit holds in a cgroup
// below main's (main's limit is far above it): the task is OOMKilled, its
// usage told in its terminated message, and its cgroup goes at Remove.
func TestTaskLimitsBelowMains(t *testing.T) {
	name := fmt.Sprintf("limits-%d", os.Getpid())
	c := runtimetest.StartContainer(t, "limits-box", "SANDBOX_MAIN_CONTAINER="+name)
	cg := memoryCgroup(t, c, 512<<20)
	rt := launchRuntime(t, name)
	task := newTask(t, "hog", "exec dd if=/dev/zero of=/dev/null bs=100M count=1")
	task.Spec.Process.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("32Mi")}}
	if _, err := rt.Start(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	term := waitTerminated(t, rt, task.Name)
	if term.Reason != sdk.ReasonOOMKilled || term.ExitCode != 137 || !strings.Contains(term.Message, "used ") {
		t.Fatalf("task: %+v, want OOMKilled 137 with its usage", term)
	}
	dirs, _ := filepath.Glob(filepath.Join(cg, "task-executor-*", task.Name))
	if len(dirs) != 1 {
		t.Fatalf("the task's cgroup below main's: %v", dirs)
	}
	b, err := os.ReadFile(filepath.Join(dirs[0], "memory.limit_in_bytes"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(32<<20) {
		t.Errorf("the task's memory limit: %q, %v", b, err)
	}
	if err := rt.Remove(context.Background(), task.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dirs[0]); !os.IsNotExist(err) {
		t.Errorf("the removed task's cgroup %s: %v", dirs[0], err)
	}
}
