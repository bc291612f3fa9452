package runtimetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"

	"github.com/opensandbox/task-executor/sdk/shim"
)

// Built is a plugin BuildPlugin built for the tests of a package.
type Built struct {
	// Path is the plugin's executable. The task-executor shim is beside it,
	// where sdk/shimdriver finds it.
	Path string
	// Env is the environment to launch it with (see LaunchPlugin): where the
	// race detector writes its reports, under -race.
	Env []string
	// raceLogs is that directory ("": not a race build).
	raceLogs string
}

// BuildPlugin builds the plugin in package pkg (as go build names it: an
// import path, or a directory such as ".") into dir, and the shim beside
// it. When the test binary runs with the race detector, so does the plugin,
// and RaceReports returns what it found: a test main fails on them.
func BuildPlugin(ctx context.Context, dir, pkg string) (*Built, error) {
	b := &Built{Path: filepath.Join(dir, filepath.Base(pkg))}
	if pkg == "." {
		wd, err := os.Getwd()
		if err != nil {
			return nil, fmt.Errorf("while naming the plugin: %w", err)
		}
		b.Path = filepath.Join(dir, filepath.Base(wd))
	}
	args := []string{"build", "-o", b.Path}
	if RaceEnabled() {
		b.raceLogs = filepath.Join(dir, "race")
		if err := os.MkdirAll(b.raceLogs, 0o700); err != nil {
			return nil, fmt.Errorf("while making the race log directory: %w", err)
		}
		args = append(args, "-race")
		// No sleep at exit: every Close and Kill would wait for it.
		b.Env = []string{"GORACE=log_path=" + filepath.Join(b.raceLogs, "report") + " atexit_sleep_ms=0"}
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("while building the plugin %s: %w\n%s", pkg, err, out)
	}
	// The host refuses plugins that others may write to, which a umask of
	// 002 would make.
	if err := os.Chmod(b.Path, 0o755); err != nil {
		return nil, fmt.Errorf("while building the plugin %s: %w", pkg, err)
	}
	if err := shim.Build(ctx, filepath.Join(dir, "task-executor-shim")); err != nil {
		return nil, err
	}
	return b, nil
}

// RaceReports returns the race detector's reports from the plugin's
// processes so far, one string each.
func (b *Built) RaceReports() []string {
	if b.raceLogs == "" {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(b.raceLogs, "*"))
	var out []string
	for _, f := range files {
		if r, err := os.ReadFile(f); err == nil {
			out = append(out, string(r))
		}
	}
	return out
}

// RaceEnabled reports whether the running test binary was built with the
// race detector.
func RaceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}
