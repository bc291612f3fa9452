package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBadFlagsExitWithOneLine(t *testing.T) {
	cases := []struct {
		name string
		args []string
		env  []string
		says string
	}{
		{"bad duration", []string{"--reconcile-interval", "soon"}, nil, "reconcile-interval"},
		{"zero interval", []string{"--reconcile-interval", "0s"}, nil, "must be positive"},
		{"bad bool from env", nil, []string{"ENABLE_SIDECAR_MODE=perhaps"}, "ENABLE_SIDECAR_MODE"},
		{"bad level", []string{"--log-level", "loud"}, nil, "log-level"},
		{"bad format", []string{"--log-format", "xml"}, nil, "log-format"},
		{"bad address", []string{"--listen-addr", "nowhere"}, nil, "listen-addr"},
		{"negative cap", []string{"--max-concurrent-tasks", "-1"}, nil, "max-concurrent-tasks"},
		{"unknown flag", []string{"--frobnicate"}, nil, "frobnicate"},
		{"stray argument", []string{"serve"}, nil, "unexpected argument"},
		{"default runtime without a name", []string{"--default-runtime", "process="}, nil, "KIND=NAME"},
		{"default runtime of an unknown kind", []string{"--default-runtime", "gpu=x"}, nil, "unknown kind"},
		{"default runtime given twice", nil, []string{"DEFAULT_RUNTIMES=process=a,process=b"}, "given twice"},
		{"process runtime in sidecar mode", []string{"--default-runtime", "process=process", "--enable-sidecar-mode"}, nil, "sidecar mode"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "task-executor"), append(c.args, "--data-dir", t.TempDir())...)
			cmd.Env = append(os.Environ(), c.env...)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("exited 0, want an error: %s", out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], c.says) {
				t.Fatalf("output %q: want one line that mentions %q", out, c.says)
			}
		})
	}
}

func TestEnvConfiguresAndFlagWins(t *testing.T) {
	// LISTEN_ADDR is overridden by the flag the harness passes; DATA_DIR is
	// used because no flag names a data directory here.
	dataDir := filepath.Join(t.TempDir(), "from-env")
	t.Cleanup(func() { releaseDataDir(t, dataDir) })
	cmd := exec.Command(filepath.Join(binDir, "task-executor"), "--listen-addr", "127.0.0.1:0",
		"--plugin-dir", filepath.Join(binDir, "plugins"), "--log-format", "json")
	cmd.Env = append(os.Environ(), "DATA_DIR="+dataDir, "LISTEN_ADDR=not-an-address")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	eventually(t, 10*time.Second, func() bool {
		_, err := os.Stat(dataDir)
		return err == nil
	}, func() string { return "DATA_DIR was not used" })
}

// TestGracefulShutdown: SIGTERM stops the host cleanly, leaves tasks
// running, and the next start picks them up.
func TestGracefulShutdown(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", shTask("survivor", "sleep 1.5; exit 4"))
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("survivor")
		return tk.Status.State.Running != nil
	}, func() string { return "the task never ran" })
	st := h.shimState("survivor")
	h.stop()
	if code := h.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the host exited %d after SIGTERM, want 0", code)
	}
	if !alive(st.PID) {
		t.Fatal("the task did not survive the host's shutdown")
	}
	h.restart()
	if term := h.waitTerminated("survivor", 15*time.Second).Status.State.Terminated; term.ExitCode != 4 {
		t.Fatalf("after the restart: %+v, want exit 4", term)
	}
}
