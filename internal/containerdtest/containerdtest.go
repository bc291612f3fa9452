// Package containerdtest gives tests a real containerd serving the CRI v1
// API, private to the test binary: its root, state, sockets and images live
// in one short directory under /tmp, made by hack/containerd-up.sh and
// removed, with every process and mount it made, by hack/containerd-down.sh.
//
// A package whose tests need it calls Main from its TestMain and Require from
// each such test; the first Require brings containerd up, Main brings it
// down after the last test:
//
//	func TestMain(m *testing.M) { os.Exit(containerdtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		env := containerdtest.Require(t)
//		// dial "unix://"+env.Socket, run pods with env.BusyboxImage ...
//	}
//
// Where containerd cannot run (not root, packages missing and not
// installable) the tests are skipped with a loud banner, unless
// TASK_EXECUTOR_REQUIRE_CRI=1, as CI sets, turns that into a failure.
package containerdtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RequireEnvVar set to 1 makes an unavailable containerd a test failure
// rather than a skip, so CI cannot pass by running none of the CRI tests.
const RequireEnvVar = "TASK_EXECUTOR_REQUIRE_CRI"

const (
	// Generous: a fresh machine first installs packages with apt.
	upTimeout = 10 * time.Minute
	// containerd answers on its socket before the CRI plugin has finished
	// starting and before it has seen the imported images.
	criReadyTimeout = 30 * time.Second
)

// Env is a running containerd: Socket serves the CRI v1 API (dial it as
// "unix://"+Socket), BusyboxImage and PauseImage are present in its k8s.io
// namespace, and PauseImage is its sandbox image.
type Env struct {
	Dir, Socket, BusyboxImage, PauseImage string

	downScript string
	// A process that runs containerd-down.sh once watchdogW is closed: by
	// Down, or by the kernel when this test binary dies in any way (a panic
	// in a test goroutine, a -timeout, a signal), so nothing outlives it.
	watchdog  *exec.Cmd
	watchdogW *os.File
	downOnce  sync.Once
	downErr   error
}

// Up runs hack/containerd-up.sh in a fresh short directory under /tmp and
// returns the environment once its CRI API answers and has both images.
func Up() (*Env, error) { return upWith("") }

// UpEvented is Up with a containerd that has CRI container events
// (GetContainerEvents), built from the Go module proxy by
// hack/containerd-build.sh (minutes the first time, then cached): Debian's
// containerd 1.6 has none.
func UpEvented() (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, fmt.Errorf("finding the repository's hack/ scripts: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", filepath.Join(root, "hack", "containerd-build.sh")).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		return nil, fmt.Errorf("running hack/containerd-build.sh: %w\n%s", err, bytes.TrimSpace(stderr))
	}
	return upWith(strings.TrimSpace(string(out)))
}

// upWith is Up with the containerd binaries of binDir ("": the machine's).
func upWith(binDir string) (*Env, error) {
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("containerd needs root, and this runs as uid %d", uid)
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, fmt.Errorf("finding the repository's hack/ scripts: %w", err)
	}
	// Short on purpose: the socket path must fit in 107 bytes.
	dir, err := os.MkdirTemp("/tmp", "ctd")
	if err != nil {
		return nil, fmt.Errorf("making the containerd directory: %w", err)
	}
	e := &Env{Dir: dir, downScript: filepath.Join(root, "hack", "containerd-down.sh")}
	if err := e.armWatchdog(); err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("starting the clean-up watchdog: %w", err)
	}
	if err := e.up(filepath.Join(root, "hack", "containerd-up.sh"), binDir); err != nil {
		if derr := e.Down(); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, err
	}
	return e, nil
}

func (e *Env) up(script, binDir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", script, e.Dir)
	if binDir != "" {
		cmd.Env = append(os.Environ(), "CONTAINERD_BIN_DIR="+binDir)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// If the script is killed, its children must not keep Wait blocked on
	// the pipes.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("running hack/containerd-up.sh %s: %w\n%s", e.Dir, err, strings.TrimSpace(stderr.String()))
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vars[k] = v
		}
	}
	e.Socket, e.BusyboxImage, e.PauseImage = vars["CRI_SOCKET"], vars["CRI_BUSYBOX_IMAGE"], vars["CRI_PAUSE_IMAGE"]
	if e.Socket == "" || e.BusyboxImage == "" || e.PauseImage == "" {
		return fmt.Errorf("reading hack/containerd-up.sh's output: CRI_SOCKET, CRI_BUSYBOX_IMAGE or CRI_PAUSE_IMAGE missing in %q", stdout.String())
	}
	if err := e.waitCRI(); err != nil {
		return fmt.Errorf("waiting for the CRI API on %s (started %s ago): %w", e.Socket, time.Since(start).Round(time.Millisecond), err)
	}
	return nil
}

// waitCRI returns once the CRI plugin answers and lists both images, so a
// test's first call does not race containerd's start-up.
func (e *Env) waitCRI() error {
	conn, err := grpc.NewClient("unix://"+e.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("dialing: %w", err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	img := runtimeapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), criReadyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = func() error {
			if _, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
				return fmt.Errorf("Version: %w", err)
			}
			for _, name := range []string{e.BusyboxImage, e.PauseImage} {
				st, err := img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: name}})
				if err != nil {
					return fmt.Errorf("ImageStatus %s: %w", name, err)
				}
				if st.GetImage() == nil {
					return fmt.Errorf("image %s not known to the CRI plugin", name)
				}
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}

// armWatchdog starts the process that brings the environment down once the
// write end of its stdin is closed. It has its own process group so that a
// Ctrl-C to the test does not kill it before it has cleaned up.
func (e *Env) armWatchdog() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("making a pipe: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("bash", "-c", `read -r _ || true; exec bash "$0" "$1"`, e.downScript, e.Dir)
	cmd.Stdin = r
	// Files, not buffers: a buffer would be a pipe to this process, and
	// writing to it after this process died would kill the clean-up.
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting bash: %w", err)
	}
	e.watchdog, e.watchdogW = cmd, w
	return nil
}

// Down stops every process the environment started, unmounts what it
// mounted and removes Dir. It is safe to call more than once.
func (e *Env) Down() error {
	e.downOnce.Do(func() {
		if e.watchdog == nil {
			// An Env not made by Up: run the script directly.
			script := e.downScript
			if script == "" {
				root, err := RepoRoot()
				if err != nil {
					e.downErr = fmt.Errorf("finding hack/containerd-down.sh: %w", err)
					return
				}
				script = filepath.Join(root, "hack", "containerd-down.sh")
			}
			cmd := exec.Command("bash", script, e.Dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				e.downErr = fmt.Errorf("running hack/containerd-down.sh %s: %w\n%s", e.Dir, err, bytes.TrimSpace(out))
			}
			return
		}
		e.watchdogW.Close()
		if err := e.watchdog.Wait(); err != nil {
			e.downErr = fmt.Errorf("running hack/containerd-down.sh %s: %w (its messages are on stderr)", e.Dir, err)
		}
	})
	return e.downErr
}

// RepoRoot finds the repository, the directory holding go.mod and
// hack/containerd-up.sh: from this file's compile-time path, else (with
// -trimpath) from the working directory, which for a test is its
// package's directory.
func RepoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range starts {
		for {
			if fileExists(filepath.Join(d, "go.mod")) && fileExists(filepath.Join(d, "hack", "containerd-up.sh")) {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("no directory with go.mod and hack/containerd-up.sh above %v", starts)
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// The package's environments: each brought up by the first Require (or
// RequireEvented), brought down by Main once the tests are done. Lazily, so
// that a run of benchmarks or of tests that need no containerd neither
// waits for it nor shares the CPU and the disk with it.
var (
	mainCalled bool
	plain      = &lazyEnv{what: "containerd", up: Up}
	evented    = &lazyEnv{what: "containerd with CRI events", up: UpEvented}
)

// lazyEnv is an environment brought up at most once.
type lazyEnv struct {
	what        string
	up          func() (*Env, error)
	once        sync.Once
	env         *Env
	unavailable string
}

func required() bool { return os.Getenv(RequireEnvVar) == "1" }

// Main is for a package's TestMain: it runs the tests and brings down the
// environments they brought up (Require, RequireEvented), and returns the
// exit code.
func Main(m *testing.M) (code int) {
	mainCalled = true
	// Deferred, so that a panic out of m.Run still brings them down; a test
	// binary that dies outright is covered by the watchdog.
	defer func() {
		for _, l := range []*lazyEnv{plain, evented} {
			env := l.env
			if env == nil {
				continue
			}
			if code != 0 {
				// Down removes the log, and a failing CRI call often says
				// no more than containerd's log does.
				fmt.Fprint(os.Stderr, env.logProblems())
			}
			if err := env.Down(); err != nil {
				fmt.Fprintf(os.Stderr, "FAIL: bringing %s down: %v\n", l.what, err)
				if code == 0 {
					code = 1
				}
			}
		}
	}()
	return m.Run()
}

// Require returns the package's environment, bringing containerd up the
// first time it is called. Without containerd it fails the test when
// TASK_EXECUTOR_REQUIRE_CRI=1 (saying why it could not be brought up), and
// otherwise skips it, loudly.
func Require(t testing.TB) *Env {
	t.Helper()
	return plain.require(t)
}

// RequireEvented is Require for an environment of its own whose containerd
// has CRI container events (see UpEvented).
func RequireEvented(t testing.TB) *Env {
	t.Helper()
	return evented.require(t)
}

func (l *lazyEnv) require(t testing.TB) *Env {
	t.Helper()
	if !mainCalled {
		why := "containerdtest.Main was not called from this package's TestMain"
		if required() {
			t.Fatalf("%s=1 but %s is not available: %s", RequireEnvVar, l.what, why)
		}
		t.Skip("\n" + banner(why))
	}
	l.once.Do(func() {
		start := time.Now()
		env, err := l.up()
		if err != nil {
			l.unavailable = err.Error()
			fmt.Fprint(os.Stderr, banner(l.unavailable))
			return
		}
		fmt.Fprintf(os.Stderr, "containerdtest: %s up in %s at %s\n", l.what, time.Since(start).Round(time.Millisecond), env.Socket)
		l.env = env
	})
	if l.env != nil {
		return l.env
	}
	if required() {
		t.Fatalf("%s=1 but %s could not be brought up:\n%s", RequireEnvVar, l.what, l.unavailable)
	}
	t.Skip("\n" + banner(l.unavailable))
	return nil
}

// logProblems returns the last error and warning lines of containerd's log,
// less the CNI one that is expected here (pods use the node's network).
func (e *Env) logProblems() string {
	b, err := os.ReadFile(filepath.Join(e.Dir, "containerd.log"))
	if err != nil {
		return fmt.Sprintf("containerdtest: reading containerd's log: %v\n", err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if (strings.Contains(l, "level=error") || strings.Contains(l, "level=warning") || strings.Contains(l, "level=fatal")) &&
			!strings.Contains(l, "failed to load cni during init") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "containerdtest: containerd logged no errors or warnings\n"
	}
	const keep = 40
	if len(lines) > keep {
		lines = lines[len(lines)-keep:]
	}
	return "containerdtest: containerd's last errors and warnings:\n" + strings.Join(lines, "\n") + "\n"
}

func banner(why string) string {
	line := strings.Repeat("*", 72)
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n*** CRI TESTS NOT RUN: ", line)
	b.WriteString(strings.ReplaceAll(strings.TrimSpace(why), "\n", "\n***   "))
	fmt.Fprintf(&b, "\n*** They need root and a working containerd (hack/containerd-up.sh).\n")
	fmt.Fprintf(&b, "*** Set %s=1 to make this a failure instead of a skip.\n%s\n", RequireEnvVar, line)
	return b.String()
}
