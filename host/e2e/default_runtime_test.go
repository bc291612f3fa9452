package e2e

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/sdk"
)

// TestDefaultRuntime: with --default-runtime process=stuck, a process task
// whose spec names no runtime runs on the plugin's runtime "stuck"; one
// that names process still runs on process; GET /runtimes says which
// runtime is the default for which kind. Each task tells where it ran by
// its cgroup, which is named for the runtime.
func TestDefaultRuntime(t *testing.T) {
	dir := pluginDir(t, "stuck", "./internal/stuckplugin")
	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, args: []string{"--default-runtime", "process=stuck"}}
	h.start()
	t.Cleanup(h.cleanup)

	var rts []api.Runtime
	if err := json.Unmarshal(h.mustDo(200, "GET", "/runtimes", nil), &rts); err != nil {
		t.Fatal(err)
	}
	defaults := map[string][]sdk.Kind{}
	for _, rt := range rts {
		defaults[rt.Name] = rt.DefaultFor
	}
	if !slices.Equal(defaults["stuck"], []sdk.Kind{sdk.KindProcess}) || len(defaults["process"]) != 0 {
		t.Errorf("GET /runtimes defaults %v: want process tasks on stuck, none on process", defaults)
	}

	h.mustDo(201, "POST", "/tasks", shTask("implicit", "cat /proc/self/cgroup"))
	explicit := shTask("explicit", "cat /proc/self/cgroup")
	explicit["spec"].(map[string]any)["runtime"] = "process"
	h.mustDo(201, "POST", "/tasks", explicit)
	for name, rt := range map[string]string{"implicit": "stuck", "explicit": "process"} {
		if term := h.waitTerminated(name, 20*time.Second).Status.State.Terminated; term.ExitCode != 0 {
			t.Fatalf("task %s: %+v", name, term)
		}
		out := string(h.mustDo(200, "GET", "/tasks/"+name+"/logs", nil))
		if !strings.Contains(out, "-"+rt+"/"+name+"\n") {
			t.Errorf("task %s ran in the cgroups %q: want those of runtime %s", name, out, rt)
		}
	}
}

// TestDefaultRuntimeRefused: a default runtime that is not there, or is
// turned off, stops the start with the reason.
func TestDefaultRuntimeRefused(t *testing.T) {
	cases := []struct {
		name string
		args []string
		says string
	}{
		{"not installed", []string{"--default-runtime", "process=nope"}, "no such runtime"},
		{"turned off", []string{"--default-runtime", "container=cri"}, "container mode is off"},
		{"wrong kind", []string{"--default-runtime", "container=process"}, "not container ones"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Bounded: a host that starts after all would serve for good.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			dir := dataDir(t)
			t.Cleanup(func() { releaseDataDir(t, dir) })
			cmd := exec.CommandContext(ctx, filepath.Join(binDir, "task-executor"), append(tc.args,
				"--data-dir", dir, "--listen-addr", "127.0.0.1:0")...)
			out, err := cmd.CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.says) {
				t.Fatalf("exit %v: want a refusal that says %q: %s", err, tc.says, out)
			}
		})
	}
}
