package cgroups

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

const mi = 1 << 20

func TestLimitsFor(t *testing.T) {
	q := resource.MustParse
	tests := []struct {
		name string
		r    corev1.ResourceRequirements
		want Limits
	}{
		{"none: BestEffort's least shares", corev1.ResourceRequirements{}, Limits{CPUShares: 2}},
		{"cpu limit 200m, no request: request defaults to the limit",
			corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: q("200m")}},
			Limits{CPUQuotaMicros: 20000, CPUPeriodMicros: 100000, CPUShares: 204}},
		{"cpu request 500m, limit 2",
			corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: q("500m")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: q("2")},
			},
			Limits{CPUQuotaMicros: 200000, CPUPeriodMicros: 100000, CPUShares: 512}},
		{"cpu request 1, no limit",
			corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: q("1")}},
			Limits{CPUShares: 1024}},
		{"cpu limit 1m: least quota 1000 and least shares 2",
			corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceCPU: q("1m")}},
			Limits{CPUQuotaMicros: 1000, CPUPeriodMicros: 100000, CPUShares: 2}},
		{"explicit cpu request 0 with a limit",
			corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: q("0")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: q("1")},
			},
			Limits{CPUQuotaMicros: 100000, CPUPeriodMicros: 100000, CPUShares: 2}},
		{"huge request: the kernel's most shares",
			corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: q("1000")}},
			Limits{CPUShares: 262144}},
		{"memory limit 32Mi, request ignored",
			corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceMemory: q("16Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceMemory: q("32Mi")},
			},
			Limits{MemoryBytes: 33554432, CPUShares: 2}},
		{"memory limit 1G",
			corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: q("1G")}},
			Limits{MemoryBytes: 1000000000, CPUShares: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LimitsFor(tt.r); got != tt.want {
				t.Errorf("LimitsFor = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSharesToWeight(t *testing.T) {
	tests := []struct{ shares, weight int64 }{
		{0, 100}, // the kernel's default
		{1, 1},   // clamped to 2 first
		{2, 1},
		{102, 4},
		{512, 20},
		{1024, 39},
		{2048, 79},
		{262144, 10000},
		{1 << 40, 10000},
	}
	for _, tt := range tests {
		if got := sharesToWeight(tt.shares); got != tt.weight {
			t.Errorf("sharesToWeight(%d) = %d, want %d", tt.shares, got, tt.weight)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Membership
		wantErr bool
	}{
		{"hybrid", "4:memory:/process_api/x\n2:cpuacct:/\n1:cpu:/\n1:name=systemd:/user.slice\n0::/\n", []Membership{
			{Controllers: []string{"memory"}, Path: "/process_api/x"},
			{Controllers: []string{"cpuacct"}, Path: "/"},
			{Controllers: []string{"cpu"}, Path: "/"},
			{Controllers: []string{"name=systemd"}, Path: "/user.slice"},
			{V2: true, Path: "/"},
		}, false},
		{"co-mounted", "3:cpu,cpuacct:/kubepods/pod1\n", []Membership{
			{Controllers: []string{"cpu", "cpuacct"}, Path: "/kubepods/pod1"},
		}, false},
		{"v2 only", "0::/system.slice/te.service\n", []Membership{{V2: true, Path: "/system.slice/te.service"}}, false},
		{"outside the namespace", "0::/../../x\n", []Membership{{V2: true, Path: "/../../x"}}, false},
		{"malformed", "4:memory\n", nil, true},
		{"no controller on v1", "4::/x\n", nil, true},
		{"relative path", "4:memory:x\n", nil, true},
		{"empty", "", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMemberships([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if !slices.EqualFunc(got, tt.want, func(a, b Membership) bool {
				return a.V2 == b.V2 && a.Path == b.Path && slices.Equal(a.Controllers, b.Controllers)
			}) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 master:3 - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
34 31 0:31 / /mnt/cg\040root rw - cgroup2 cgroup2 rw,nsdelegate
`
	got, err := parseMountinfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{
		{root: "/", point: "/sys/fs/cgroup/cpu,cpuacct", options: []string{"rw", "cpu", "cpuacct"}},
		{root: "/docker/abc", point: "/sys/fs/cgroup/memory", options: []string{"rw", "memory"}},
		{v2: true, root: "/", point: "/mnt/cg root", options: []string{"rw", "nsdelegate"}},
	}
	if !slices.EqualFunc(got, want, func(a, b mountEntry) bool {
		return a.v2 == b.v2 && a.root == b.root && a.point == b.point && slices.Equal(a.options, b.options)
	}) {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if _, err := parseMountinfo([]byte("31 23 0:28 / /x rw - cgroup\n")); err == nil {
		t.Error("a line without source and options parsed")
	}
}

// hybridMountinfo is this project's test machine's: v1 cpu and cpuacct on
// hierarchies of their own, and a v2 hierarchy without controllers.
const hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const hybridCgroup = `9:name=systemd:/
8:pids:/
4:memory:/process_api/154f
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
`

func TestSelectTrees(t *testing.T) {
	type want struct{ name, parentDir string }
	tests := []struct {
		name, cgroup, mountinfo, parent string
		controllers                     map[string]string // v2 mount point -> cgroup.controllers
		want                            []want
		wantErr                         string // substring; "" for none
		unavailable                     bool
		wantWarning                     string
	}{
		{
			name: "hybrid, cpu and cpuacct apart, unified unused", cgroup: hybridCgroup, mountinfo: hybridMountinfo,
			controllers: map[string]string{"/sys/fs/cgroup/unified": "memory cpu"},
			want: []want{
				{"memory", "/sys/fs/cgroup/memory/process_api/154f/task-executor-abc"},
				{"cpuacct", "/sys/fs/cgroup/cpuacct/task-executor-abc"},
				{"cpu", "/sys/fs/cgroup/cpu/task-executor-abc"},
			},
		},
		{
			name: "hybrid, absolute parent", cgroup: hybridCgroup, mountinfo: hybridMountinfo, parent: "/task-executor/",
			want: []want{
				{"memory", "/sys/fs/cgroup/memory/task-executor"},
				{"cpuacct", "/sys/fs/cgroup/cpuacct/task-executor"},
				{"cpu", "/sys/fs/cgroup/cpu/task-executor"},
			},
		},
		{
			name:   "v1 with cpu,cpuacct co-mounted",
			cgroup: "5:memory:/kubepods/pod1/c\n3:cpu,cpuacct:/kubepods/pod1/c\n0::/\n",
			mountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n" +
				"35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
			want: []want{
				{"memory", "/sys/fs/cgroup/memory/kubepods/pod1/c/task-executor-abc"},
				{"cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c/task-executor-abc"},
			},
		},
		{
			name: "v2 only", cgroup: "0::/system.slice/te.service\n",
			mountinfo:   "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
			controllers: map[string]string{"/sys/fs/cgroup": "cpuset cpu io memory hugetlb pids"},
			want:        []want{{"cgroup2", "/sys/fs/cgroup/system.slice/te.service/task-executor-abc"}},
		},
		{
			name: "v2 only, absolute parent", cgroup: "0::/system.slice/te.service\n", parent: "/task-executor",
			mountinfo:   "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
			controllers: map[string]string{"/sys/fs/cgroup": "cpu memory"},
			want:        []want{{"cgroup2", "/sys/fs/cgroup/task-executor"}},
		},
		{
			name: "v2 in a cgroup namespace", cgroup: "0::/\n",
			mountinfo:   "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			controllers: map[string]string{"/sys/fs/cgroup": "cpu memory"},
			want:        []want{{"cgroup2", "/sys/fs/cgroup/task-executor-abc"}},
		},
		{
			name: "v2 outside the cgroup namespace", cgroup: "0::/../../other\n",
			mountinfo:   "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			controllers: map[string]string{"/sys/fs/cgroup": "cpu memory"},
			wantErr:     "outside its cgroup namespace", unavailable: true,
		},
		{
			name: "v2 without cpu", cgroup: "0::/x\n",
			mountinfo:   "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			controllers: map[string]string{"/sys/fs/cgroup": "memory pids"},
			wantErr:     "not cpu", unavailable: true,
		},
		{
			name: "hybrid whose v1 has neither memory nor cpu", cgroup: "2:pids:/\n1:name=systemd:/\n0::/te\n",
			mountinfo: "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
			controllers: map[string]string{"/sys/fs/cgroup/unified": "cpu memory"},
			want:        []want{{"cgroup2", "/sys/fs/cgroup/unified/te/task-executor-abc"}},
		},
		{
			name: "hybrid whose unified has no controllers", cgroup: "2:pids:/\n0::/\n",
			mountinfo: "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
			controllers: map[string]string{"/sys/fs/cgroup/unified": "hugetlb"},
			wantErr:     "offers the controllers", unavailable: true,
		},
		{
			name: "bind mount of the container's subtree", cgroup: "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
			mountinfo: "33 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n" +
				"32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n",
			want: []want{
				{"memory", "/sys/fs/cgroup/memory/task-executor-abc"},
				{"cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/task-executor-abc"},
			},
		},
		{
			name: "bind mount, absolute parent outside it", cgroup: "4:memory:/docker/abc\n", parent: "/task-executor",
			mountinfo: "33 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
			wantErr:   "outside every mount", unavailable: true,
		},
		{
			name: "bind mount and the whole hierarchy: the whole one reaches an absolute parent", cgroup: "4:memory:/docker/abc\n",
			parent: "/task-executor",
			mountinfo: "33 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n" +
				"50 31 0:30 / /host/cgroup/memory rw - cgroup cgroup rw,memory\n",
			want:        []want{{"memory", "/host/cgroup/memory/task-executor"}},
			wantWarning: "no cgroup hierarchy has the cpu controller",
		},
		{
			name: "escaped mount point", cgroup: "4:memory:/\n",
			mountinfo:   `33 31 0:30 / /mnt/cg\040root/memory rw - cgroup cgroup rw,memory` + "\n",
			want:        []want{{"memory", "/mnt/cg root/memory/task-executor-abc"}},
			wantWarning: "no cgroup hierarchy has the cpuacct controller",
		},
		{
			name: "memory not mounted", cgroup: "4:memory:/\n3:cpu,cpuacct:/\n",
			mountinfo:   "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
			want:        []want{{"cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/task-executor-abc"}},
			wantWarning: "memory is not mounted",
		},
		{
			name: "nothing mounted", cgroup: "4:memory:/\n0::/\n", mountinfo: "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n",
			wantErr: "not mounted", unavailable: true,
		},
		{
			name: "relative parent", cgroup: hybridCgroup, mountinfo: hybridMountinfo, parent: "task-executor",
			wantErr: "absolute",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cgs, err := ParseMemberships([]byte(tt.cgroup))
			if err != nil {
				t.Fatal(err)
			}
			mounts, err := parseMountinfo([]byte(tt.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			controllersOf := func(dir string) ([]string, error) {
				c, ok := tt.controllers[dir]
				if !ok {
					return nil, fs.ErrNotExist
				}
				return strings.Fields(c), nil
			}
			trees, warnings, err := selectTrees(cgs, mounts, tt.parent, "abc", controllersOf)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tt.wantErr)
				}
				if errors.Is(err, ErrUnavailable) != tt.unavailable {
					t.Errorf("errors.Is(%v, ErrUnavailable) = %v", err, !tt.unavailable)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []want
			for _, tr := range trees {
				got = append(got, want{tr.name(), tr.dir(tr.parent)})
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("trees = %v, want %v", got, tt.want)
			}
			if tt.wantWarning != "" && !slices.ContainsFunc(warnings, func(w string) bool { return strings.Contains(w, tt.wantWarning) }) {
				t.Errorf("warnings = %q, want one saying %q", warnings, tt.wantWarning)
			}
			if tt.wantWarning == "" && len(warnings) > 0 {
				t.Errorf("unexpected warnings %q", warnings)
			}
		})
	}
	if _, _, err := selectTrees(nil, nil, "", "a/b", nil); err == nil {
		t.Error("an id with a slash was taken")
	}
}

// fakeCgroup makes dir with the given files, as the kernel would have made
// a cgroup.
func fakeCgroup(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func readFile(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func checkFiles(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	for name, v := range want {
		if got := readFile(t, filepath.Join(dir, name)); got != v {
			t.Errorf("%s = %q, want %q", name, got, v)
		}
	}
}

func closeAll(procs []*os.File, oom *os.File) {
	for _, f := range procs {
		f.Close()
	}
	if oom != nil {
		oom.Close()
	}
}

func TestFakeV2(t *testing.T) {
	root := filepath.Join(t.TempDir(), "unified")
	fakeCgroup(t, root, map[string]string{
		"cgroup.controllers":     "cpuset cpu io memory pids",
		"cgroup.subtree_control": "cpu memory io", // enabled already: not to be written
		"cgroup.procs":           "1\n",           // the root may have processes
	})
	level := map[string]string{
		"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "",
		"cgroup.type": "domain", "cgroup.procs": "",
	}
	fakeCgroup(t, filepath.Join(root, "te"), level)
	fakeCgroup(t, filepath.Join(root, "te", "a"), level)

	m, err := newManager([]tree{{v2: true, mountRoot: "/", mountPoint: root, parent: "/te/a"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFiles(t, root, map[string]string{"cgroup.subtree_control": "cpu memory io"})
	checkFiles(t, filepath.Join(root, "te"), map[string]string{"cgroup.subtree_control": "+memory +cpu"})
	checkFiles(t, filepath.Join(root, "te", "a"), map[string]string{"cgroup.subtree_control": "+memory +cpu"})
	if got, want := m.Parents(), []string{filepath.Join(root, "te", "a")}; !slices.Equal(got, want) {
		t.Errorf("Parents = %q, want %q", got, want)
	}

	g, err := m.Group("t1")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "te", "a", "t1")
	if got := g.Dirs(); !slices.Equal(got, []string{dir}) {
		t.Errorf("Dirs = %q, want %q", got, dir)
	}
	fakeCgroup(t, dir, map[string]string{
		"memory.max": "", "memory.swap.max": "", "cpu.max": "", "cpu.weight": "", "cgroup.procs": "",
		"cgroup.kill": "", "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
		"memory.current": "1000\n", "memory.peak": "2000\n", "cpu.stat": "usage_usec 1500000\nuser_usec 1000000\n",
	})
	tests := []struct {
		name string
		l    Limits
		want map[string]string
	}{
		{"limits", Limits{MemoryBytes: 32 * mi, CPUQuotaMicros: 20000, CPUPeriodMicros: 100000, CPUShares: 1024},
			map[string]string{"memory.max": "33554432", "memory.swap.max": "0", "cpu.max": "20000 100000", "cpu.weight": "39"}},
		{"none: the kernel's defaults, over the last task's", Limits{},
			map[string]string{"memory.max": "max", "memory.swap.max": "max", "cpu.max": "max 100000", "cpu.weight": "100"}},
		{"period of its own, BestEffort shares", Limits{CPUQuotaMicros: 5000, CPUPeriodMicros: 10000, CPUShares: 2},
			map[string]string{"cpu.max": "5000 10000", "cpu.weight": "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			procs, oom, err := g.Create(tt.l)
			if err != nil {
				t.Fatal(err)
			}
			defer closeAll(procs, oom)
			checkFiles(t, dir, tt.want)
			if len(procs) != 1 || procs[0].Name() != filepath.Join(dir, "cgroup.procs") {
				t.Errorf("procs = %v", procs)
			}
			if oom == nil || oom.Name() != filepath.Join(dir, "memory.events") {
				t.Fatalf("oom = %v", oom)
			}
			if n := oomKills(t, oom); n != 1 {
				t.Errorf("oom_kill = %d, want 1", n)
			}
		})
	}

	u, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := (Usage{CPUSeconds: 1.5, MemoryBytes: 1000, MemoryPeakBytes: 2000}); u != want {
		t.Errorf("Stats = %+v, want %+v", u, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, dir, map[string]string{"cgroup.kill": "1"})

	// A kernel without swap accounting or memory.peak.
	g2, _ := m.Group("t2")
	dir2 := filepath.Join(root, "te", "a", "t2")
	fakeCgroup(t, dir2, map[string]string{
		"memory.max": "", "cpu.max": "", "cpu.weight": "", "cgroup.procs": "", "memory.events": "oom_kill 0\n",
		"memory.current": "7\n", "cpu.stat": "usage_usec 250000\n",
	})
	procs, oom, err := g2.Create(Limits{MemoryBytes: mi})
	if err != nil {
		t.Fatal(err)
	}
	closeAll(procs, oom)
	if _, err := os.Stat(filepath.Join(dir2, "memory.swap.max")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("memory.swap.max made: %v", err)
	}
	if u, err := g2.Stats(); err != nil || u != (Usage{CPUSeconds: 0.25, MemoryBytes: 7}) {
		t.Errorf("Stats = %+v, %v", u, err)
	}

	// Kill and Remove of a group that does not exist, or has no process.
	gone, _ := m.Group("gone")
	if _, err := gone.Stats(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stats of a missing group: %v, want ErrNotExist", err)
	}
	if err := gone.Kill(ctx); err != nil {
		t.Errorf("Kill of a missing group: %v", err)
	}
	if err := gone.Remove(ctx); err != nil {
		t.Errorf("Remove of a missing group: %v", err)
	}
	nested, _ := m.Group("nested")
	if err := os.MkdirAll(filepath.Join(root, "te", "a", "nested", "sub", "subsub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := nested.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "te", "a", "nested")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("nested group left: %v", err)
	}

	// A name that is a control file's is no cgroup.
	bad, err := m.Group("cgroup.procs")
	if err != nil {
		t.Fatal(err)
	}
	if procs, oom, err := bad.Create(Limits{}); err == nil {
		closeAll(procs, oom)
		t.Error("Create made a group of a control file")
	}
}

func TestFakeV2NoInternalProcess(t *testing.T) {
	root := t.TempDir()
	fakeCgroup(t, root, map[string]string{"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "cpu memory"})
	own := filepath.Join(root, "exec.service")
	fakeCgroup(t, own, map[string]string{
		"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "",
		"cgroup.type": "domain", "cgroup.procs": strconv.Itoa(os.Getpid()) + "\n",
	})
	_, err := newManager([]tree{{v2: true, mountRoot: "/", mountPoint: root, parent: "/exec.service/task-executor-x"}}, nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no-internal-process") || !strings.Contains(err.Error(), "the executor among them") {
		t.Fatalf("err = %v, want ErrUnavailable naming the no-internal-process rule", err)
	}
	checkFiles(t, own, map[string]string{"cgroup.subtree_control": ""})
	if _, err := os.Stat(filepath.Join(own, "task-executor-x")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("parent made below the cgroup that cannot have it: %v", err)
	}

	// A level whose parent does not delegate cpu.
	fakeCgroup(t, own, map[string]string{"cgroup.controllers": "memory", "cgroup.procs": ""})
	_, err = newManager([]tree{{v2: true, mountRoot: "/", mountPoint: root, parent: "/exec.service/task-executor-x"}}, nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no cpu controller") {
		t.Fatalf("err = %v, want ErrUnavailable naming the cpu controller", err)
	}
}

func TestFakeV1(t *testing.T) {
	base := t.TempDir()
	memRoot, cpuRoot := filepath.Join(base, "memory"), filepath.Join(base, "cpu,cpuacct")
	for _, d := range []string{memRoot, cpuRoot} {
		fakeCgroup(t, d, nil)
	}
	m, err := newManager([]tree{
		{controllers: []string{"memory"}, mountRoot: "/", mountPoint: memRoot, parent: "/te"},
		{controllers: []string{"cpu", "cpuacct"}, mountRoot: "/docker/c1", mountPoint: cpuRoot, parent: "/docker/c1/te"},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Parents(), []string{filepath.Join(memRoot, "te"), filepath.Join(cpuRoot, "te")}; !slices.Equal(got, want) {
		t.Errorf("Parents = %q, want %q", got, want)
	}
	g, err := m.Group("t1")
	if err != nil {
		t.Fatal(err)
	}
	memDir, cpuDir := filepath.Join(memRoot, "te", "t1"), filepath.Join(cpuRoot, "te", "t1")
	fakeCgroup(t, memDir, map[string]string{
		"memory.limit_in_bytes": "", "cgroup.procs": "", "tasks": "", "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"memory.usage_in_bytes": "100\n", "memory.max_usage_in_bytes": "200\n",
	})
	fakeCgroup(t, cpuDir, map[string]string{
		"cpu.cfs_period_us": "", "cpu.cfs_quota_us": "", "cpu.shares": "", "cgroup.procs": "", "tasks": "", "cpuacct.usage": "2500000000\n",
	})
	tests := []struct {
		name     string
		l        Limits
		mem, cpu map[string]string
	}{
		{"limits", Limits{MemoryBytes: 32 * mi, CPUQuotaMicros: 20000, CPUPeriodMicros: 100000, CPUShares: 204},
			map[string]string{"memory.limit_in_bytes": "33554432"},
			map[string]string{"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "20000", "cpu.shares": "204"}},
		{"none: the kernel's defaults", Limits{},
			map[string]string{"memory.limit_in_bytes": "-1"},
			map[string]string{"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "-1", "cpu.shares": "1024"}},
		{"shares clamped as the kernel does", Limits{CPUShares: 1},
			nil, map[string]string{"cpu.shares": "2"}},
		{"shares clamped above", Limits{CPUShares: 1 << 40},
			nil, map[string]string{"cpu.shares": "262144"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			procs, oom, err := g.Create(tt.l)
			if err != nil {
				t.Fatal(err)
			}
			defer closeAll(procs, oom)
			checkFiles(t, memDir, tt.mem)
			checkFiles(t, cpuDir, tt.cpu)
			var names []string
			for _, f := range procs {
				names = append(names, f.Name())
			}
			if want := []string{filepath.Join(memDir, "tasks"), filepath.Join(cpuDir, "tasks")}; !slices.Equal(names, want) {
				t.Errorf("join files = %q, want %q", names, want)
			}
			if oom == nil || oom.Name() != filepath.Join(memDir, "memory.oom_control") {
				t.Fatalf("oom = %v", oom)
			}
			if n := oomKills(t, oom); n != 2 {
				t.Errorf("oom_kill = %d, want 2", n)
			}
		})
	}
	if u, err := g.Stats(); err != nil || u != (Usage{CPUSeconds: 2.5, MemoryBytes: 100, MemoryPeakBytes: 200}) {
		t.Errorf("Stats = %+v, %v", u, err)
	}
	for _, d := range []string{memDir, cpuDir} {
		if _, err := os.Stat(filepath.Join(d, "memory.memsw.limit_in_bytes")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("memsw touched in %s: %v", d, err)
		}
	}
}

func TestFakeV1Cpuset(t *testing.T) {
	root := t.TempDir()
	fakeCgroup(t, root, map[string]string{"cpuset.cpus": "0-3\n", "cpuset.mems": "0\n"})
	fakeCgroup(t, filepath.Join(root, "te"), map[string]string{"cpuset.cpus": "\n", "cpuset.mems": "\n"})
	m, err := newManager([]tree{{controllers: []string{"cpuset", "cpu"}, mountRoot: "/", mountPoint: root, parent: "/te"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFiles(t, filepath.Join(root, "te"), map[string]string{"cpuset.cpus": "0-3", "cpuset.mems": "0"})
	g, _ := m.Group("t1")
	dir := filepath.Join(root, "te", "t1")
	fakeCgroup(t, dir, map[string]string{
		"cpuset.cpus": "", "cpuset.mems": "", "cpu.cfs_period_us": "", "cpu.cfs_quota_us": "", "cpu.shares": "", "cgroup.procs": "", "tasks": "",
	})
	procs, oom, err := g.Create(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	closeAll(procs, oom)
	if oom != nil {
		t.Error("an OOM counter without a memory hierarchy")
	}
	checkFiles(t, dir, map[string]string{"cpuset.cpus": "0-3", "cpuset.mems": "0"})
}

func TestInvalidInput(t *testing.T) {
	root := t.TempDir()
	m, err := newManager([]tree{{controllers: []string{"memory"}, mountRoot: "/", mountPoint: root, parent: "/te"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"", ".", "..", "a/b", "../x", "Upper", "a b", strings.Repeat("a", 254)} {
		if _, err := m.Group(name); err == nil {
			t.Errorf("Group(%q) taken", name)
		}
	}
	g, err := m.Group("ok.name-1")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []Limits{
		{MemoryBytes: -1},
		{CPUQuotaMicros: -1},
		{CPUQuotaMicros: 999},
		{CPUQuotaMicros: 1000, CPUPeriodMicros: 999},
		{CPUQuotaMicros: 1000, CPUPeriodMicros: 1000001},
		{CPUShares: -2},
	} {
		if procs, oom, err := g.Create(l); err == nil {
			closeAll(procs, oom)
			t.Errorf("Create(%+v) taken", l)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "te", "ok.name-1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("invalid limits made a cgroup: %v", err)
	}
}

// TestKillSparesOutsiders: a PID listed in cgroup.procs whose process is not
// in the cgroup (it died and its number went to another) is not killed.
func TestKillSparesOutsiders(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	root := t.TempDir()
	for _, tr := range []tree{
		{v2: true, mountRoot: "/", mountPoint: filepath.Join(root, "v2"), parent: "/te"},
		{controllers: []string{"memory"}, mountRoot: "/", mountPoint: filepath.Join(root, "v1"), parent: "/te"},
	} {
		fakeCgroup(t, tr.mountPoint, map[string]string{"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "cpu memory"})
		fakeCgroup(t, filepath.Join(tr.mountPoint, "te"), map[string]string{"cgroup.controllers": "cpu memory", "cgroup.subtree_control": "cpu memory"})
		m, err := newManager([]tree{tr}, nil)
		if err != nil {
			t.Fatal(err)
		}
		g, _ := m.Group("t1")
		fakeCgroup(t, g.Dirs()[0], map[string]string{"cgroup.procs": strconv.Itoa(cmd.Process.Pid) + "\n"})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = g.Kill(ctx)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tr.name(), err)
		}
	}
	if killed(t, cmd.Process.Pid) {
		t.Error("a process outside the cgroup was killed")
	}
	// The check itself tells a killed process.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if !killed(t, cmd.Process.Pid) {
		t.Error("a killed process not told killed")
	}
}

// killed tells whether the unreaped child pid was sent SIGKILL: it then has
// the signal pending or is a zombie already.
func killed(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		v = strings.TrimSpace(v)
		switch k {
		case "State":
			if strings.HasPrefix(v, "Z") || strings.HasPrefix(v, "X") {
				return true
			}
		case "SigPnd", "ShdPnd":
			mask, err := strconv.ParseUint(v, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if mask&(1<<(unix.SIGKILL-1)) != 0 {
				return true
			}
		}
	}
	return false
}

// oomKills reads the "oom_kill N" line of an OOM counter file.
func oomKills(t *testing.T, f *os.File) int64 {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(buf[:n])) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			k, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return k
		}
	}
	t.Fatalf("no oom_kill line in %s: %q", f.Name(), buf[:n])
	return 0
}

// realManager makes a Manager on this machine's cgroups: under the test's
// own cgroup on v1, and under an absolute parent on v2, where the test's own
// cgroup has processes and so can have no children with controllers.
func realManager(t *testing.T) (*Manager, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making cgroups needs root")
	}
	b := make([]byte, 6)
	rand.Read(b)
	id := "test-" + hex.EncodeToString(b)
	parent := ""
	if hostIsV2(t) {
		parent = "/task-executor-" + id
	}
	m, err := New(parent, id)
	if err != nil {
		t.Fatal(err)
	}
	parents := m.Parents()
	t.Cleanup(func() {
		if err := m.RemoveParents(); err != nil {
			t.Error(err)
		}
		for _, d := range parents {
			if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("parent cgroup %s left: %v", d, err)
			}
		}
	})
	for _, d := range parents {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Fatalf("parent cgroup %s: %v", d, err)
		}
		if !strings.HasPrefix(filepath.Base(d), "task-executor-") {
			t.Errorf("parent %s is not named task-executor-*", d)
		}
	}
	return m, id
}

// hostIsV2 tells whether New uses the unified hierarchy here.
func hostIsV2(t *testing.T) bool {
	t.Helper()
	cgData, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	cgs, err := ParseMemberships(cgData)
	if err != nil {
		t.Fatal(err)
	}
	miData, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := parseMountinfo(miData)
	if err != nil {
		t.Fatal(err)
	}
	trees, _, err := selectTrees(cgs, mounts, "", "x", readControllers)
	return err == nil && trees[0].v2
}

// realGroup creates a group with l and removes it when the test ends.
func realGroup(t *testing.T, m *Manager, name string, l Limits) (*Group, []*os.File, *os.File) {
	t.Helper()
	g, err := m.Group(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := g.Remove(ctx); err != nil {
			t.Error(err)
		}
	})
	procs, oom, err := g.Create(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeAll(procs, oom) })
	return g, procs, oom
}

// gated is a shell that runs script once a line is written to it, so that
// it can be moved into a cgroup before it does anything.
type gated struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	waited chan error
}

func startGated(t *testing.T, script string) *gated {
	t.Helper()
	cmd := exec.Command("sh", "-c", "read x; "+script)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &gated{cmd: cmd, stdin: stdin, waited: make(chan error, 1)}
	go func() { p.waited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // by its pidfd: never another process
		select {
		case <-p.waited:
		case <-time.After(10 * time.Second):
			t.Errorf("process %d not reaped", cmd.Process.Pid)
		}
	})
	return p
}

// moveIn writes the shell's PID to every join file (it is single-threaded:
// through a v1 tasks file that moves it whole).
func (p *gated) moveIn(t *testing.T, procs []*os.File) {
	t.Helper()
	for _, f := range procs {
		if _, err := f.WriteString(strconv.Itoa(p.cmd.Process.Pid)); err != nil {
			t.Fatalf("while moving %d into %s: %v", p.cmd.Process.Pid, f.Name(), err)
		}
	}
}

func (p *gated) open(t *testing.T) {
	t.Helper()
	if _, err := io.WriteString(p.stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
}

// wait waits for the shell's end and returns its wait status.
func (p *gated) wait(t *testing.T, d time.Duration) syscall.WaitStatus {
	t.Helper()
	select {
	case err := <-p.waited:
		p.waited <- err // for the cleanup
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	case <-time.After(d):
		t.Fatalf("process %d still running after %v", p.cmd.Process.Pid, d)
		return 0
	}
}

// groupPids lists the processes in the group's cgroups.
func groupPids(t *testing.T, g *Group) []int {
	t.Helper()
	var all []int
	for _, d := range g.Dirs() {
		pids, err := readPids(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pids {
			if !slices.Contains(all, p) {
				all = append(all, p)
			}
		}
	}
	slices.Sort(all)
	return all
}

// checkMember checks from /proc/<pid>/cgroup that pid is in g in every
// hierarchy g uses.
func checkMember(t *testing.T, m *Manager, g *Group, pid int) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	lines, err := ParseMemberships(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range m.trees {
		i := slices.IndexFunc(lines, tr.matches)
		if i < 0 {
			t.Fatalf("process %d has no cgroup in %s: %s", pid, tr.name(), b)
		}
		if want := g.path(tr); lines[i].Path != want || !strings.HasSuffix(want, "/"+g.name) {
			t.Errorf("process %d is in %s in %s, want %s", pid, lines[i].Path, tr.name(), want)
		}
	}
}

func TestRealKillAndRemove(t *testing.T) {
	m, _ := realManager(t)
	l := Limits{MemoryBytes: 32 * mi, CPUQuotaMicros: 50000, CPUPeriodMicros: 100000, CPUShares: 512}
	g, procs, _ := realGroup(t, m, "kill-test", l)

	var sawMemory, sawCPU bool
	for _, d := range g.Dirs() {
		checkIf := func(name, want string) bool {
			b, err := os.ReadFile(filepath.Join(d, name))
			if errors.Is(err, fs.ErrNotExist) {
				return false
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != want {
				t.Errorf("%s/%s = %q, want %q", d, name, got, want)
			}
			return true
		}
		sawMemory = checkIf("memory.limit_in_bytes", "33554432") || sawMemory
		sawMemory = checkIf("memory.max", "33554432") || sawMemory
		if checkIf("cpu.cfs_quota_us", "50000") {
			sawCPU = true
			checkIf("cpu.cfs_period_us", "100000")
			checkIf("cpu.shares", "512")
		}
		if checkIf("cpu.max", "50000 100000") {
			sawCPU = true
			checkIf("cpu.weight", "20")
		}
	}
	if !sawMemory || !sawCPU {
		t.Errorf("no memory (%v) or cpu (%v) limit file in %q", sawMemory, sawCPU, g.Dirs())
	}

	p := startGated(t, "sleep 1000 & setsid sleep 1000 & sleep 1000")
	p.moveIn(t, procs)
	checkMember(t, m, g, p.cmd.Process.Pid)
	p.open(t)

	// Wait for the three sleeps, one of them in a session of its own.
	var pids []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids = groupPids(t, g)
		sleeps := 0
		for _, pid := range pids {
			if comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm"); err == nil && strings.TrimSpace(string(comm)) == "sleep" {
				sleeps++
			}
		}
		if sleeps == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the group holds %v, not three sleeps", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var pidfds []int
	for _, pid := range pids {
		checkMember(t, m, g, pid)
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		pidfds = append(pidfds, fd)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if left := groupPids(t, g); len(left) > 0 {
		t.Errorf("processes %v left after Kill", left)
	}
	if ws := p.wait(t, 10*time.Second); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("shell ended with %v, want SIGKILL", ws)
	}
	for i, fd := range pidfds {
		// A pidfd turns readable when its process has exited.
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 10000); err != nil || n != 1 {
			t.Errorf("process %d still alive after Kill (%v)", pids[i], err)
		}
	}

	if _, err := g.Stats(); err != nil {
		t.Errorf("Stats: %v", err)
	}
	if err := g.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left after Remove: %v", d, err)
		}
	}
	if _, err := g.Stats(); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stats after Remove: %v, want ErrNotExist", err)
	}
	if err := g.Kill(ctx); err != nil {
		t.Errorf("Kill after Remove: %v", err)
	}
	if err := g.Remove(ctx); err != nil {
		t.Errorf("Remove after Remove: %v", err)
	}
}

func TestRealOOM(t *testing.T) {
	m, _ := realManager(t)
	const limit = 16 * mi
	g, procs, oom := realGroup(t, m, "oom-test", Limits{MemoryBytes: limit})
	if oom == nil {
		t.Fatal("no OOM counter")
	}
	before := oomKills(t, oom)

	// tail buffers a line that never ends.
	p := startGated(t, "exec tail /dev/zero")
	p.moveIn(t, procs)
	p.open(t)
	if ws := p.wait(t, 60*time.Second); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("memory hog ended with %v, want SIGKILL", ws)
	}
	deadline := time.Now().Add(10 * time.Second)
	for oomKills(t, oom) <= before {
		if time.Now().After(deadline) {
			t.Fatalf("oom_kill stayed at %d", before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	u, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("peak %d bytes of a %d limit; oom_kill %d -> %d", u.MemoryPeakBytes, limit, before, oomKills(t, oom))
	if u.MemoryPeakBytes < limit*9/10 || u.MemoryPeakBytes > limit {
		t.Errorf("peak %d, want about %d", u.MemoryPeakBytes, limit)
	}
}

// TestRealCPUQuota checks that the quota is the kernel's throttling, not a
// speed: a busy loop limited to 200m gets 0.2 s of CPU a second.
func TestRealCPUQuota(t *testing.T) {
	m, _ := realManager(t)
	g, procs, _ := realGroup(t, m, "cpu-test", Limits{CPUQuotaMicros: 20000, CPUPeriodMicros: 100000})
	p := startGated(t, "while :; do :; done")
	p.moveIn(t, procs)
	start := time.Now()
	p.open(t)
	time.Sleep(2 * time.Second) // the span measured, not a wait for something
	u, err := g.Stats()
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	want := 0.2 * elapsed.Seconds()
	t.Logf("used %.3f s of CPU in %v in %q", u.CPUSeconds, elapsed, g.Dirs())
	if u.CPUSeconds < want*0.75 || u.CPUSeconds > want*1.25 {
		t.Errorf("used %.3f s of CPU in %v, want %.3f ± 25%%", u.CPUSeconds, elapsed, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := g.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
}

// TestRealParentRemadeAtCreate: a parent removed since New (an operator's
// cleanup) is made again by the next Create instead of failing every task.
func TestRealParentRemadeAtCreate(t *testing.T) {
	m, _ := realManager(t)
	if err := m.RemoveParents(); err != nil {
		t.Fatal(err)
	}
	for _, d := range m.Parents() {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("parent %s still there after RemoveParents: %v", d, err)
		}
	}
	g, _, _ := realGroup(t, m, "after-cleanup", Limits{MemoryBytes: 64 << 20})
	for _, d := range g.Dirs() {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Errorf("task cgroup %s: %v", d, err)
		}
	}
}

// TestRealSpareAdopt: a process moved into a spare ahead of time is in the
// task's cgroup once the spare is adopted, with the task's limits written
// over the spare's; a cgroup an earlier task of the name left is replaced;
// RemoveSpares removes what spares are left.
func TestRealSpareAdopt(t *testing.T) {
	m, _ := realManager(t)
	if !m.CanAdopt() {
		t.Fatalf("cgroup v1 here, yet no spares: %v", m.Parents())
	}
	p := startGated(t, "exec sleep 1000")
	spare, join, err := m.Spare(Limits{CPUShares: 2})
	if err != nil {
		t.Fatal(err)
	}
	p.moveIn(t, join)
	closeAll(join, nil)
	checkMember(t, m, spare, p.cmd.Process.Pid)
	g, err := m.Group("adopter")
	if err != nil {
		t.Fatal(err)
	}
	// Left by an earlier task of the same name.
	if _, _, err := g.Create(Limits{MemoryBytes: 8 * mi}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(context.Background()); err != nil {
			t.Error(err)
		}
	})
	oom, err := g.Adopt(context.Background(), spare, Limits{MemoryBytes: 32 * mi, CPUQuotaMicros: 20000, CPUShares: 2})
	if err != nil {
		t.Fatal(err)
	}
	if oom == nil {
		t.Error("no OOM counter")
	} else {
		oom.Close()
	}
	checkMember(t, m, g, p.cmd.Process.Pid)
	for file, want := range map[string]string{"memory.limit_in_bytes": strconv.Itoa(32 * mi), "cpu.cfs_quota_us": "20000", "cpu.shares": "2"} {
		found := false
		for _, d := range g.Dirs() {
			if b, err := os.ReadFile(filepath.Join(d, file)); err == nil {
				found = true
				if got := strings.TrimSpace(string(b)); got != want {
					t.Errorf("%s: %s, want %s", file, got, want)
				}
			}
		}
		if !found {
			t.Errorf("no %s in %v", file, g.Dirs())
		}
	}
	// A second spare, never adopted.
	q := startGated(t, "exec sleep 1000")
	left, join, err := m.Spare(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	q.moveIn(t, join)
	closeAll(join, nil)
	if err := m.RemoveSpares(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, d := range left.Dirs() {
		if _, err := os.Stat(d); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("spare %s left: %v", d, err)
		}
	}
	if ws := q.wait(t, 10*time.Second); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the process of a removed spare: %v, want killed", ws)
	}
}

// TestRealHeldCounters: the counters a spare opens ahead read, after Adopt's
// rename, what the cgroup's files say by path; after Release, and for a
// group without held files, Stats reads by path; Remove releases them.
func TestRealHeldCounters(t *testing.T) {
	m, _ := realManager(t)
	if !m.CanAdopt() {
		t.Fatalf("cgroup v1 here, yet no spares: %v", m.Parents())
	}
	// 32 MiB touched, a little CPU, then idle: the figures stay put.
	p := startGated(t, "dd if=/dev/zero of=/dev/null bs=32M count=8 2>/dev/null; exec sleep 1000")
	spare, join, err := m.Spare(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	p.moveIn(t, join)
	closeAll(join, nil)
	g, err := m.Group("held")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(context.Background()); err != nil {
			t.Error(err)
		}
	})
	oom, err := g.Adopt(context.Background(), spare, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if oom == nil {
		t.Fatal("no OOM counter handed over")
	}
	oom.Close()
	if g.held.Load() == nil || spare.held.Load() != nil {
		t.Fatal("the spare's held files did not go to the group")
	}
	p.open(t)
	byPath, _ := m.Group("held")
	var held, read Usage
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if held, err = g.Stats(); err != nil {
			t.Fatal(err)
		}
		if read, err = byPath.Stats(); err != nil {
			t.Fatal(err)
		}
		// dd has run once the shell is sleep.
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p.cmd.Process.Pid))
		if strings.TrimSpace(string(comm)) == "sleep" && held.MemoryPeakBytes == read.MemoryPeakBytes && held.CPUSeconds == read.CPUSeconds {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("held %+v, by path %+v, process %q", held, read, comm)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if held.MemoryPeakBytes < 32<<20 || held.CPUSeconds <= 0 {
		t.Errorf("usage %+v: want a peak of at least 32 MiB and some CPU", held)
	}
	g.Release()
	if g.held.Load() != nil {
		t.Error("files still held after Release")
	}
	if after, err := g.Stats(); err != nil || after.MemoryPeakBytes != held.MemoryPeakBytes {
		t.Errorf("Stats after Release: %+v, %v; want the peak %d", after, err, held.MemoryPeakBytes)
	}
	g.Release() // twice is fine
}
