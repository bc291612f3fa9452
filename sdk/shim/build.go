package shim

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// The header is generated from package contract, and checked in: `make
// build` compiles the shim with a C compiler alone.
//go:generate go run ./internal/gencontract csrc/contract.h

// source is the shim program (see csrc/shim.c for why it is C), and header
// the values it shares with this package (see package contract).
var (
	//go:embed csrc/shim.c
	source []byte
	//go:embed csrc/contract.h
	header []byte
)

// Build compiles the task-executor-shim executable to out, statically
// linked so that it runs wherever the plugin does, with Compiler(). `make
// build` does the same; Build is for tests and for plugins shipped without
// the executor's build.
func Build(ctx context.Context, out string) error {
	cc := Compiler()
	dir, err := os.MkdirTemp("", "shim-src-")
	if err != nil {
		return fmt.Errorf("while building the shim: %w", err)
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "shim.c")
	if err := os.WriteFile(src, source, 0o600); err != nil {
		return fmt.Errorf("while building the shim: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "contract.h"), header, 0o600); err != nil {
		return fmt.Errorf("while building the shim: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("while building the shim: %w", err)
	}
	cmd := exec.CommandContext(ctx, cc, CFlags(src, out)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("while building the shim with %s: %w\n%s", cc, err, b)
	}
	return nil
}

// Compiler returns the C compiler for the shim: $SHIM_CC if set, else
// musl-gcc if installed (musl's start-up is about six times cheaper than
// glibc's, see csrc/shim.c), else cc.
func Compiler() string {
	if cc := os.Getenv("SHIM_CC"); cc != "" {
		return cc
	}
	if p, err := exec.LookPath("musl-gcc"); err == nil {
		return p
	}
	return "cc"
}

// CFlags are the compiler arguments that build the shim from src to out
// (the Makefile uses the same). src's directory must hold contract.h too.
func CFlags(src, out string) []string {
	return []string{"-O2", "-static", "-Wall", "-Wno-format-truncation", "-o", out, src}
}
