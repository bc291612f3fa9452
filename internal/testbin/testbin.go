// Package testbin builds task-executor for tests as `make build` does: one
// executable holding the host, its built-in runtimes and the shim.
package testbin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/opensandbox/task-executor/sdk/shim"
)

// Options tune Executor.
type Options struct {
	// Race builds with the race detector.
	Race bool
	// Env is added to go build's environment (CGO_ENABLED=0 for a static
	// executable, say).
	Env []string
}

// Executor builds cmd/task-executor to out, with the shim compiled from
// sdk/shim/csrc embedded.
func Executor(ctx context.Context, out string, opts Options) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "testbin-")
	if err != nil {
		return fmt.Errorf("while building task-executor: %w", err)
	}
	defer os.RemoveAll(tmp)
	shimBin := filepath.Join(tmp, "task-executor-shim")
	if err := shim.Build(ctx, shimBin); err != nil {
		return err
	}
	overlay, err := json.Marshal(map[string]map[string]string{"Replace": {
		filepath.Join(root, "cmd", "task-executor", "task-executor-shim"): shimBin,
	}})
	if err != nil {
		return err
	}
	overlayFile := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(overlayFile, overlay, 0o600); err != nil {
		return fmt.Errorf("while building task-executor: %w", err)
	}
	args := []string{"build", "-tags", "embedshim", "-overlay", overlayFile, "-o", out}
	if opts.Race {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/task-executor")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), opts.Env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/task-executor: %w\n%s", err, b)
	}
	// The host refuses group-writable plugins, which a umask of 002 would
	// make; the executable is its built-in runtimes' plugin too.
	return os.Chmod(out, 0o755)
}

// ModuleRoot is the directory of task-executor's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("while finding the module root: %w", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
