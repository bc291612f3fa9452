package podtest

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/internal/testbin"
)

// ExecutorImage is the executor's image in the runtime: the executable of
// this tree, laid out as the Dockerfile lays it out, over busybox.
const ExecutorImage = "localhost/task-executor:test"

// The image's name without its tag, given to `ctr images import
// --base-name`; the tag comes from the OCI layout hack/executor-image.sh
// writes.
const executorImageBase = "localhost/task-executor"

const (
	// A cold Go build cache makes the first build of a machine slow.
	imageBuildTimeout = 10 * time.Minute
	// The CRI plugin learns of an imported image from an event.
	imageVisibleTimeout = 30 * time.Second
)

// builtImages records, per containerd socket, whether the executor's image
// was built and imported: once per containerd, and so once per test binary,
// whose tests share one. The binaries are built afresh each run (Go's build
// cache makes that quick), so the image holds the tree under test.
var builtImages = struct {
	sync.Mutex
	err map[string]error
}{err: map[string]error{}}

// EnsureExecutorImage makes sure env's containerd has ExecutorImage, built
// from this tree (once per test binary), for tests that run the executor's
// image some other way than Start does (under a kubelet, say).
func EnsureExecutorImage(ctx context.Context, t testing.TB, env *containerdtest.Env) error {
	conn, err := grpc.NewClient("unix://"+env.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("while dialing the CRI socket %s: %w", env.Socket, err)
	}
	defer conn.Close()
	return ensureExecutorImage(ctx, t, env, runtimeapi.NewImageServiceClient(conn))
}

// ensureExecutorImage builds the executor's image and imports it into env's
// containerd, unless that was done before. The work happens in a temporary
// directory of t, which is done with it once the image is imported.
func ensureExecutorImage(ctx context.Context, t testing.TB, env *containerdtest.Env, images runtimeapi.ImageServiceClient) error {
	builtImages.Lock()
	defer builtImages.Unlock()
	if err, done := builtImages.err[env.Socket]; done {
		return err
	}
	start := time.Now()
	ctx, cancel := withDefaultTimeout(ctx, imageBuildTimeout)
	defer cancel()
	err := buildExecutorImage(ctx, t.TempDir(), env, images)
	builtImages.err[env.Socket] = err
	if err == nil {
		t.Logf("podtest: built and imported %s in %s", ExecutorImage, time.Since(start).Round(time.Millisecond))
	}
	return err
}

func buildExecutorImage(ctx context.Context, work string, env *containerdtest.Env, images runtimeapi.ImageServiceClient) error {
	root, err := containerdtest.RepoRoot()
	if err != nil {
		return err
	}
	bin := filepath.Join(work, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return fmt.Errorf("while making the image's bin directory: %w", err)
	}
	// The tools' own temporary files go here too, not in /tmp.
	tmp := filepath.Join(work, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("while making a temporary directory for the build: %w", err)
	}
	// Static, since the image has no C library.
	exe := filepath.Join(bin, "task-executor")
	if err := testbin.Executor(ctx, exe, testbin.Options{Env: []string{"CGO_ENABLED=0", "GOTMPDIR=" + tmp}}); err != nil {
		return fmt.Errorf("while building the executor for the image: %w", err)
	}
	if err := checkStatic(exe); err != nil {
		return err
	}

	tar := filepath.Join(work, "executor-image.tar")
	script := filepath.Join(root, "hack", "executor-image.sh")
	layer := exec.CommandContext(ctx, "bash", script, bin, tar)
	layer.Env = append(os.Environ(), "TMPDIR="+tmp)
	if out, err := layer.CombinedOutput(); err != nil {
		return fmt.Errorf("while layering the image (hack/executor-image.sh): %w\n%s", err, out)
	}
	// --base-name, not --index-name: see hack/executor-image.sh.
	imp := exec.CommandContext(ctx, "ctr", "-a", env.Socket, "-n", "k8s.io", "images", "import", "--base-name", executorImageBase, tar)
	imp.Env = append(os.Environ(), "TMPDIR="+tmp)
	if out, err := imp.CombinedOutput(); err != nil {
		return fmt.Errorf("while importing the image (%s): %w\n%s", strings.Join(imp.Args, " "), err, out)
	}
	vctx, cancel := context.WithTimeout(ctx, imageVisibleTimeout)
	defer cancel()
	err = poll(vctx, func() (bool, error) {
		st, err := images.ImageStatus(vctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ExecutorImage}})
		if err != nil {
			return false, err
		}
		return st.GetImage() != nil, errors.New("not listed yet")
	})
	if err != nil {
		return fmt.Errorf("waiting for the CRI plugin to see %s: %w", ExecutorImage, err)
	}
	return nil
}

// checkStatic refuses a dynamically linked binary: in a busybox image it
// would fail with a puzzling "no such file or directory".
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("while checking %s is static: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the image needs static binaries", filepath.Base(path))
		}
	}
	return nil
}
