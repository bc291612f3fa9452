package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/cgroups"
	"github.com/opensandbox/task-executor/sdk/runtimetest"
	"github.com/opensandbox/task-executor/sdk/shimdriver"
)

// plugin is the plugin under test, built once by TestMain.
var plugin *runtimetest.Built

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "bwrap-plugin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	plugin, err = runtimetest.BuildPlugin(context.Background(), dir, ".")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	for _, r := range plugin.RaceReports() {
		fmt.Fprintln(os.Stderr, "the race detector reported a race in the plugin:", r)
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// harness runs the conformance kit against the plugin.
type harness struct{}

func (harness) Launch(t *testing.T) runtimetest.Instance {
	inst := runtimetest.LaunchPlugin(t, plugin.Path, plugin.Env)
	if m := os.Getenv(envMutant); m != "" {
		return mutantInstance{Instance: inst, rt: mutantRuntime{Runtime: inst.Runtime(), mutant: m}}
	}
	return inst
}
func (harness) Spec(script string, opts runtimetest.SpecOptions) sdk.TaskSpec {
	return runtimetest.ShellSpec(script, opts)
}
func (harness) StartErrorSpec() sdk.TaskSpec { return runtimetest.MissingCommandSpec() }
func (harness) Output(t *testing.T, task sdk.Task) string {
	return runtimetest.ReadTaskFiles(t, task)
}
func (harness) Settings() map[string]string {
	return map[string]string{sdk.SettingGracePeriod: "3s", sdk.SettingMaxLogBytes: "104857600"}
}

// CleanDataDir removes the parent of the tasks' cgroups, which fails if a
// task's cgroup was left behind.
func (harness) CleanDataDir(t *testing.T, dataDir string) {
	mgr, err := cgroups.New("", shimdriver.CgroupID(dataDir, name))
	if err != nil {
		t.Errorf("task cgroups: %v", err)
		return
	}
	if err := mgr.RemoveSpares(context.Background()); err != nil {
		t.Errorf("spare cgroups: %v", err)
	}
	if err := mgr.RemoveParents(); err != nil {
		t.Errorf("task cgroups left: %v", err)
	}
}

// DefaultDir: a task without a working directory runs in its own.
func (harness) DefaultDir(task sdk.Task) string { return task.Dir }

// InvalidSpecs are refused by Validate: the create's 400.
func (harness) InvalidSpecs() map[string]sdk.TaskSpec {
	spec := func(opts map[string]string) sdk.TaskSpec {
		s := runtimetest.ShellSpec("true", runtimetest.SpecOptions{})
		s.RuntimeOptions = opts
		return s
	}
	return map[string]sdk.TaskSpec{
		"an unknown option":       spec(map[string]string{"netwrok": "on"}),
		"a bad value for network": spec(map[string]string{OptNetwork: "yes"}),
	}
}

func TestConformance(t *testing.T) { runtimetest.Run(t, harness{}) }

// envMutant names the deliberate defect a child test process of
// TestConformanceCatchesBrokenRuntimes layers over the plugin.
const envMutant = "BWRAP_CONFORMANCE_MUTANT"

// The defects; each must make the kit fail.
const (
	// mutantNoValidate says NoValidate, as a wrapper of shimdriver that
	// kept its Info would: the host would never ask Validate.
	mutantNoValidate = "no-validate"
	// mutantAcceptAll accepts every spec.
	mutantAcceptAll = "accept-all"
	// mutantRootDir runs a task that names no working directory in /.
	mutantRootDir = "root-dir"
)

type mutantInstance struct {
	runtimetest.Instance
	rt sdk.Runtime
}

func (m mutantInstance) Runtime() sdk.Runtime { return m.rt }

type mutantRuntime struct {
	sdk.Runtime
	mutant string
}

func (m mutantRuntime) Init(ctx context.Context, cfg sdk.Config) (sdk.Info, error) {
	info, err := m.Runtime.Init(ctx, cfg)
	info.NoValidate = info.NoValidate || m.mutant == mutantNoValidate
	return info, err
}

func (m mutantRuntime) Validate(ctx context.Context, spec sdk.TaskSpec) error {
	if m.mutant == mutantAcceptAll {
		return nil
	}
	return m.Runtime.Validate(ctx, spec)
}

func (m mutantRuntime) Start(ctx context.Context, task sdk.Task) (sdk.TaskStatus, error) {
	if m.mutant == mutantRootDir && task.Spec.Process.WorkingDir == "" {
		task.Spec.Process.WorkingDir = "/"
	}
	return m.Runtime.Start(ctx, task)
}

// TestConformanceCatchesBrokenRuntimes runs the kit's new cases in a child
// test process against the plugin with a deliberate defect, and expects
// them to fail.
func TestConformanceCatchesBrokenRuntimes(t *testing.T) {
	if os.Getenv(envMutant) != "" {
		t.Fatal("the mutant child must run TestConformance only")
	}
	for _, tc := range []struct{ mutant, subtest string }{
		{mutantNoValidate, "validate"},
		{mutantAcceptAll, "validate"},
		{mutantRootDir, "default-dir"},
	} {
		t.Run(tc.mutant, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestConformance$/^"+tc.subtest+"$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), envMutant+"="+tc.mutant)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "--- FAIL: TestConformance/"+tc.subtest) {
				t.Errorf("the kit's %s case passed against mutant %s (%v):\n%s", tc.subtest, tc.mutant, err, out)
			}
		})
	}
}

// TestSandbox: what a task can see and do, against what the same command
// sees outside the sandbox.
func TestSandbox(t *testing.T) {
	inst := harness{}.Launch(t)
	rt := inst.Runtime()
	dataDir := t.TempDir()
	t.Cleanup(func() { harness{}.CleanDataDir(t, dataDir) })
	if _, err := rt.Init(t.Context(), sdk.Config{DataDir: dataDir, Settings: harness{}.Settings()}); err != nil {
		t.Fatal(err)
	}
	run := func(taskName, script string, opts map[string]string) string {
		t.Helper()
		task := sdk.Task{Name: taskName, Dir: filepath.Join(dataDir, taskName), Spec: runtimetest.ShellSpec(script, runtimetest.SpecOptions{})}
		task.Spec.RuntimeOptions = opts
		if err := os.Mkdir(task.Dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := rt.Validate(t.Context(), task.Spec); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(t.Context(), task); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			st, err := rt.Status(t.Context(), taskName)
			if err == nil && st.State.Terminated != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("task %s did not end: %+v %v", taskName, st, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := rt.Remove(t.Context(), taskName); err != nil {
			t.Fatal(err)
		}
		return runtimetest.ReadTaskFiles(t, task)
	}
	links := func(out string) int { return strings.Count(out, ":") }

	if out := run("usr", "touch /usr/bwrap-test && echo wrote", nil); strings.Contains(out, "wrote") || !strings.Contains(out, "Read-only") {
		t.Errorf("writing /usr: %q, want a read-only file system", out)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "secret"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out := run("peek", "ls -A "+dataDir+"; echo own > own && cat own", nil); out != "peek\nown\n" {
		t.Errorf("the data directory as the task sees it: %q, want only its own directory, writable", out)
	}
	// /proc/net/dev: two header lines, then one line per interface.
	closed := run("net-off", "tail -n +3 /proc/net/dev", nil)
	open := run("net-on", "tail -n +3 /proc/net/dev", map[string]string{OptNetwork: "on"})
	host, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	if links(closed) != 1 || !strings.Contains(closed, "lo:") || links(open) != strings.Count(string(host), ":") {
		t.Errorf("interfaces without the network %q, with it %q; want only lo, then the host's %q", closed, open, host)
	}
	// The sandbox's own: bwrap's init and sh, which counts them with a glob
	// of its own (a pipeline's processes start in no set order, so a count
	// by one of them can miss the next); not the plugin.
	if out := run("pids", fmt.Sprintf("set -- /proc/[0-9]*; echo $#; ls -d /proc/%d", inst.(*runtimetest.PluginInstance).Pid()), nil); !strings.HasPrefix(out, "2\n") || !strings.Contains(out, "No such file") {
		t.Errorf("processes seen: %q, want the sandbox's 2 and not the plugin", out)
	}
	if err := rt.Validate(t.Context(), sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}, RuntimeOptions: map[string]string{OptNetwork: "yes"}}); err == nil {
		t.Error("network=yes was accepted")
	}
}
