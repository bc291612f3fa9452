package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/internal/testbin"
)

var (
	raceBinOnce sync.Once
	raceBin     string
	raceBinErr  error
)

// startRaceHost starts a host built with the race detector, so that races
// in the host and its built-in runtime, not only in the test, fail the
// test.
func startRaceHost(t *testing.T) *hostProc {
	t.Helper()
	raceBinOnce.Do(func() {
		dir := filepath.Join(filepath.Dir(binDir), "bin-race")
		raceBinErr = buildRaceHost(dir)
		raceBin = dir
	})
	if raceBinErr != nil {
		t.Fatal(raceBinErr)
	}
	// The harness starts the host found in binDir; no test runs in
	// parallel with another, so pointing it elsewhere for one start is
	// safe.
	usual := binDir
	binDir = raceBin
	defer func() { binDir = usual }()
	return startHost(t)
}

// buildRaceHost builds task-executor with the race detector, its built-in
// runtimes included (they are the same executable).
func buildRaceHost(dir string) error {
	return testbin.Executor(context.Background(), filepath.Join(dir, "task-executor"), testbin.Options{Race: true})
}

// TestConcurrentClients: 16 clients create, read, list, delete and replace
// overlapping tasks at once, against a host built with the race detector.
// No request fails on the host's side, every answer is consistent with the
// request, the tasks end as the last acknowledged requests say, and the
// host has no data race.
func TestConcurrentClients(t *testing.T) {
	rng := rand.New(rand.NewSource(seed(t)))
	h := startRaceHost(t)
	f := newFleet("conc", 12)
	hist := newHistory()
	c := newAPIClient(h.url)
	defer c.close()
	const clients = 16
	until := time.Now().Add(3 * time.Second)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		counts = map[string]int{}
	)
	for i := 0; i < clients; i++ {
		crng := rand.New(rand.NewSource(rng.Int63()))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(until) {
				r := f.act(c, crng, hist, requestMix{create: 4, delete: 3, setTasks: 1, get: 3, list: 2})
				mu.Lock()
				counts[fmt.Sprintf("%s %d", r.kind, r.code)]++
				mu.Unlock()
				if r.err != nil {
					t.Errorf("%s: no answer: %v", r.kind, r.err)
					return
				}
				if r.problem != "" {
					t.Error(r.problem)
				}
				if !isAllowed(r, false) {
					t.Errorf("%s answered %d", r.kind, r.code)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("answers: %v", counts)
	if t.Failed() {
		t.FailNow()
	}
	checkSettled(t, h, f, hist)

	// Whatever the clients left, one setTasks decides what remains.
	keep := map[string]bool{}
	var tasks []any
	for _, name := range f.names {
		if keep[name] = rng.Intn(2) == 0; keep[name] {
			tasks = append(tasks, f.task(name))
		}
	}
	if tasks == nil {
		tasks = []any{}
	}
	start := time.Now()
	if code, body, err := c.call("POST", "/setTasks", tasks); code != 200 {
		t.Fatalf("the final setTasks: %d %v %s", code, err, body)
	}
	final := newHistory()
	final.record(histOp{start: start, end: time.Now(), acked: true, present: keep, what: "the final setTasks"})
	if got := checkSettled(t, h, f, final); len(got) != len(tasks) {
		t.Errorf("%d tasks remain after the final setTasks of %d", len(got), len(tasks))
	}

	h.stop()
	if strings.Contains(h.logs.String(), "WARNING: DATA RACE") || h.cmd.ProcessState.ExitCode() == 66 {
		t.Errorf("the host has a data race (exit %d)", h.cmd.ProcessState.ExitCode())
	}
}
