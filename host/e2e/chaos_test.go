package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
	"github.com/opensandbox/task-executor/host/store"
)

// A client that races its requests with each other and with crashes cannot
// know in which order the host applied them, only that each request took
// effect (if at all) at one instant between its sending and its answer.
// history keeps those intervals; from them it derives which states each
// task may be in once everything has settled.

// fleet is a fixed set of task names, each with a spec of its own that
// never changes, so a task found after a crash can be checked against its
// name alone.
type fleet struct {
	names []string
	index map[string]int
}

func newFleet(prefix string, n int) *fleet {
	f := &fleet{index: map[string]int{}}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("%s-%02d", prefix, i)
		f.names = append(f.names, name)
		f.index[name] = i
	}
	return f
}

func (f *fleet) exitCode(name string) int32 { return int32(f.index[name] * 7 % 11) }

// script runs briefly: a third of the tasks are still running when a crash
// comes, the others are over in an instant.
func (f *fleet) script(name string) string {
	i := f.index[name]
	if i%3 == 0 {
		return fmt.Sprintf("sleep 0.%d; exit %d", 2+i%7, f.exitCode(name))
	}
	return fmt.Sprintf("exit %d", f.exitCode(name))
}

func (f *fleet) task(name string) map[string]any { return shTask(name, f.script(name)) }

// checkTask reports what is wrong with a task the host returned, if
// anything.
func (f *fleet) checkTask(tk api.Task) string {
	if _, ok := f.index[tk.Name]; !ok {
		return fmt.Sprintf("unknown task %q", tk.Name)
	}
	p := tk.Spec.Process
	if p == nil || len(p.Command) != 3 || p.Command[2] != f.script(tk.Name) {
		return fmt.Sprintf("task %s has spec %+v, want the script %q", tk.Name, p, f.script(tk.Name))
	}
	// A task being deleted may have been stopped on the way.
	if term := tk.Status.State.Terminated; term != nil && tk.DeletionTimestamp == nil {
		want, reason := f.exitCode(tk.Name), "Failed"
		if want == 0 {
			reason = "Succeeded"
		}
		if term.ExitCode != want || term.Reason != reason {
			return fmt.Sprintf("task %s ended with %d %s (%s), want %d %s", tk.Name, term.ExitCode, term.Reason, term.Message, want, reason)
		}
	}
	return ""
}

// histOp is a request that took effect, or may have.
type histOp struct {
	start, end time.Time
	// acked: the host answered that it took effect; otherwise the answer
	// was lost and it may or may not have.
	acked bool
	// present says, for each name the request touched, whether the task
	// exists afterwards.
	present map[string]bool
	what    string
}

type history struct {
	mu    sync.Mutex
	begin time.Time
	ops   []histOp
}

func newHistory() *history { return &history{begin: time.Now()} }

func (h *history) record(o histOp) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, o)
}

// expect returns the states name may be in once everything has settled,
// and the requests that decide it. The request applied last is one that no
// acknowledged request follows for certain (one sent after its answer came
// back); the task was absent before any request.
func (h *history) expect(name string) (present, absent bool, why string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	touching := []histOp{{acked: true, present: map[string]bool{name: false}, what: "(nothing yet)"}}
	for _, o := range h.ops {
		if _, ok := o.present[name]; ok {
			touching = append(touching, o)
		}
	}
	var reasons []string
	for i, y := range touching {
		last := true
		for j, z := range touching {
			if j != i && z.acked && z.start.After(y.end) {
				last = false
				break
			}
		}
		if !last {
			continue
		}
		if touching[i].present[name] {
			present = true
		} else {
			absent = true
		}
		state := "unanswered"
		if y.acked {
			state = "acknowledged"
		}
		reasons = append(reasons, fmt.Sprintf("%s %s [%v, %v]", state, y.what,
			y.start.Sub(h.begin).Round(time.Millisecond), y.end.Sub(h.begin).Round(time.Millisecond)))
	}
	return present, absent, strings.Join(reasons, "; ")
}

// dump lists every request that touched name, for a failure's message.
func (h *history) dump(name string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, y := range h.ops {
		if p, ok := y.present[name]; ok {
			out = append(out, fmt.Sprintf("  acknowledged=%v %s present=%v [%v, %v]", y.acked, y.what, p,
				y.start.Sub(h.begin).Round(time.Millisecond), y.end.Sub(h.begin).Round(time.Millisecond)))
		}
	}
	return fmt.Sprintf("requests on %s, in seconds since %s:\n%s", name, h.begin.UTC().Format(time.RFC3339Nano), strings.Join(out, "\n"))
}

// apiClient talks to one host process; a new one is made for each, as the
// address changes at a restart.
type apiClient struct {
	url string
	hc  *http.Client
}

func newAPIClient(url string) *apiClient {
	return &apiClient{url: url, hc: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	}}
}

func (c *apiClient) close() { c.hc.CloseIdleConnections() }

// call sends a request; an error means no answer came.
func (c *apiClient) call(method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, r)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("while reading the answer: %w", err)
	}
	return resp.StatusCode, out, nil
}

// requestMix weighs the kinds of request a client sends.
type requestMix struct{ create, delete, setTasks, get, list int }

// sentRequest is the outcome of one request a client sent.
type sentRequest struct {
	kind string
	code int // 0: no answer
	err  error
	// problem describes an answer that contradicts the request.
	problem string
}

// act sends one random request of m on f's names and records in hist what
// it did or may have done.
func (f *fleet) act(c *apiClient, rng *rand.Rand, hist *history, m requestMix) sentRequest {
	pick := rng.Intn(m.create + m.delete + m.setTasks + m.get + m.list)
	name := f.names[rng.Intn(len(f.names))]
	start := time.Now()
	switch {
	case pick < m.create:
		code, body, err := c.call("POST", "/tasks", f.task(name))
		o := histOp{start: start, end: time.Now(), acked: code == 201, present: map[string]bool{name: true}, what: fmt.Sprintf("create (%d)", code)}
		// A 5xx is a failure, but not a promise that nothing happened.
		if err != nil || code == 201 || code >= 500 {
			hist.record(o)
		}
		r := sentRequest{kind: "create", code: code, err: err}
		if code == 201 {
			var tk api.Task
			if err := json.Unmarshal(body, &tk); err != nil || tk.Name != name {
				r.problem = fmt.Sprintf("create %s answered %s", name, body)
			} else {
				r.problem = f.checkTask(tk)
			}
		}
		return r
	case pick < m.create+m.delete:
		path := "/tasks/" + name
		if rng.Intn(2) == 0 {
			path += "?gracePeriodSeconds=0"
		}
		code, _, err := c.call("DELETE", path, nil)
		// A 404 says the task was absent at that instant: as good as a
		// deletion for the model.
		acked := code == 204 || code == 404
		if err != nil || acked || code >= 500 {
			hist.record(histOp{start: start, end: time.Now(), acked: acked, present: map[string]bool{name: false}, what: fmt.Sprintf("delete (%d)", code)})
		}
		return sentRequest{kind: "delete", code: code, err: err}
	case pick < m.create+m.delete+m.setTasks:
		present := map[string]bool{}
		var tasks []any
		for _, n := range f.names {
			present[n] = rng.Intn(2) == 0
			if present[n] {
				tasks = append(tasks, f.task(n))
			}
		}
		if tasks == nil {
			tasks = []any{}
		}
		code, body, err := c.call("POST", "/setTasks", tasks)
		if err != nil || code == 200 || code >= 500 {
			hist.record(histOp{start: start, end: time.Now(), acked: code == 200, present: present, what: fmt.Sprintf("setTasks (%d)", code)})
		}
		r := sentRequest{kind: "setTasks", code: code, err: err}
		if code == 200 {
			answered := map[string]bool{}
			r.problem = f.checkList(body, func(tk api.Task) string {
				if !present[tk.Name] && tk.DeletionTimestamp == nil {
					return fmt.Sprintf("setTasks left %s out, but answered it without a deletion timestamp", tk.Name)
				}
				answered[tk.Name] = true
				return ""
			})
			for n, p := range present {
				if p && !answered[n] {
					r.problem += fmt.Sprintf("; setTasks answered without %s, which it was sent", n)
				}
			}
		}
		return r
	case pick < m.create+m.delete+m.setTasks+m.get:
		code, body, err := c.call("GET", "/tasks/"+name, nil)
		r := sentRequest{kind: "get", code: code, err: err}
		if code == 200 {
			var tk api.Task
			if err := json.Unmarshal(body, &tk); err != nil || tk.Name != name {
				r.problem = fmt.Sprintf("GET %s answered %s", name, body)
			} else {
				r.problem = f.checkTask(tk)
			}
		}
		return r
	default:
		code, body, err := c.call("GET", "/getTasks", nil)
		r := sentRequest{kind: "list", code: code, err: err}
		if code == 200 {
			r.problem = f.checkList(body, func(api.Task) string { return "" })
		}
		return r
	}
}

// checkList checks a list of tasks: sorted, each name once, each task
// valid, and whatever each must also satisfy.
func (f *fleet) checkList(body []byte, each func(api.Task) string) string {
	var ts []api.Task
	if err := json.Unmarshal(body, &ts); err != nil {
		return fmt.Sprintf("a list that does not decode: %v: %s", err, body)
	}
	var problems []string
	for i, tk := range ts {
		if i > 0 && ts[i-1].Name >= tk.Name {
			problems = append(problems, fmt.Sprintf("list not sorted or with a name twice: %s then %s", ts[i-1].Name, tk.Name))
		}
		for _, p := range []string{f.checkTask(tk), each(tk)} {
			if p != "" {
				problems = append(problems, p)
			}
		}
	}
	return strings.Join(problems, "; ")
}

// validAnswers lists, per kind of request, the answers a valid request may get
// while the host works; a 503 is allowed while a plugin restarts.
var validAnswers = map[string][]int{
	"create":   {201, 409},
	"delete":   {204, 404},
	"setTasks": {200, 409},
	"get":      {200, 404},
	"list":     {200},
}

func isAllowed(r sentRequest, plugins bool) bool {
	if plugins && r.code == 503 {
		return true
	}
	for _, c := range validAnswers[r.kind] {
		if r.code == c {
			return true
		}
	}
	return false
}

// seenShim is a task's shim and process group, as its state file named
// them.
type seenShim struct {
	name string
	shimState
}

// watchShims records, until the test ends, every shim state that appears
// in dataDir, so the processes of tasks deleted since (whose directories
// are gone) can still be checked, and killed when the test ends.
func watchShims(t *testing.T, dataDir string) (seen func() []seenShim) {
	var mu sync.Mutex
	all := map[[2]uint64]seenShim{}
	scan := func() {
		entries, _ := os.ReadDir(dataDir)
		for _, e := range entries {
			st, err := readShimState(dataDir, e.Name())
			if err != nil || st.PID == 0 {
				continue
			}
			mu.Lock()
			all[[2]uint64{uint64(st.PID), st.PIDStart}] = seenShim{e.Name(), st}
			mu.Unlock()
		}
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				scan()
			}
		}
	}()
	list := func() []seenShim {
		mu.Lock()
		defer mu.Unlock()
		out := make([]seenShim, 0, len(all))
		for _, s := range all {
			out = append(out, s)
		}
		return out
	}
	t.Cleanup(func() {
		close(done)
		<-stopped
		for _, s := range list() {
			for _, pid := range leftovers(s) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return func() []seenShim { scan(); return list() }
}

// leftovers returns the processes of a task's shim and process group that
// still run.
func leftovers(s seenShim) []int {
	var out []int
	if procStart(s.ShimPID) == s.ShimStart && alive(s.ShimPID) {
		out = append(out, s.ShimPID)
	}
	// Linux does not reuse a PID while a process group of that ID has
	// members, so the group's members are the task's unless the PID now
	// leads another process.
	if start := procStart(s.PID); start != 0 && start != s.PIDStart {
		return out
	}
	for _, pid := range processGroup(s.PID) {
		if alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

// processGroup returns the members of a process group.
func processGroup(pgid int) []int {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 2 && fields[2] == strconv.Itoa(pgid) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out = append(out, pid)
		}
	}
	return out
}

// checkNoLeftovers waits until no task process recorded in shims runs.
func checkNoLeftovers(t *testing.T, shims []seenShim) {
	t.Helper()
	var left []string
	eventually(t, 15*time.Second, func() bool {
		left = left[:0]
		for _, s := range shims {
			if pids := leftovers(s); len(pids) > 0 {
				left = append(left, fmt.Sprintf("%s: %v", s.name, pids))
			}
		}
		return len(left) == 0
	}, func() string { return fmt.Sprintf("task processes left behind: %v", left) })
}

// checkSettled waits until every task has terminated and every accepted
// deletion is done, then checks the tasks against what hist allows, and
// the data directory against the tasks. It returns the names present.
func checkSettled(t *testing.T, h *hostProc, f *fleet, hist *history) map[string]bool {
	t.Helper()
	c := newAPIClient(h.url)
	defer c.close()
	list := func() []api.Task {
		t.Helper()
		code, body, err := c.call("GET", "/getTasks", nil)
		var ts []api.Task
		if err == nil && code == 200 {
			err = json.Unmarshal(body, &ts)
		}
		if err != nil || code != 200 {
			t.Fatalf("GET /getTasks: %d %v %s", code, err, body)
		}
		return ts
	}
	var pending []string
	eventually(t, 60*time.Second, func() bool {
		pending = pending[:0]
		for _, tk := range list() {
			if tk.Status.State.Terminated == nil || tk.DeletionTimestamp != nil {
				pending = append(pending, fmt.Sprintf("%s %+v deleted=%v", tk.Name, tk.Status.State, tk.DeletionTimestamp != nil))
			}
		}
		return len(pending) == 0
	}, func() string { return fmt.Sprintf("tasks never settled: %v", pending) })

	listed := map[string]bool{}
	_, body, _ := c.call("GET", "/getTasks", nil)
	if p := f.checkList(body, func(tk api.Task) string { listed[tk.Name] = true; return "" }); p != "" {
		t.Error(p)
	}
	for _, name := range f.names {
		present, absent, why := hist.expect(name)
		switch {
		case listed[name] && !present:
			t.Errorf("task %s exists, but the last requests deleted it: %s", name, why)
			t.Log(hist.dump(name))
		case !listed[name] && !absent:
			t.Errorf("task %s is missing, but the last requests created it: %s", name, why)
			t.Log(hist.dump(name))
		}
		want := 404
		if listed[name] {
			want = 200
		}
		if code, body, err := c.call("GET", "/tasks/"+name, nil); code != want {
			t.Errorf("GET /tasks/%s: %d %v %s, want %d as the list says", name, code, err, body, want)
		}
	}

	entries, err := os.ReadDir(h.dataDir)
	if err != nil {
		t.Fatal(err)
	}
	onDisk := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			// A crash must never leave a record the host cannot read, and
			// every removal since the last start has finished.
			if name == ".quarantine" || strings.HasPrefix(name, ".trash-") {
				t.Errorf("the data directory holds %s after the tasks settled", name)
			}
			continue
		}
		onDisk[name] = true
		var rec store.Record
		b, err := os.ReadFile(filepath.Join(h.dataDir, name, store.RecordFile))
		if err == nil {
			// The record is the file's first JSON value; the final
			// state may follow it.
			err = json.NewDecoder(bytes.NewReader(b)).Decode(&rec)
		}
		if err != nil || rec.Name != name {
			t.Errorf("the directory of %s has no valid record: %v (%q)", name, err, b)
		}
		if !listed[name] {
			t.Errorf("the directory of %s is on disk, but the host does not list the task", name)
		}
	}
	for name := range listed {
		if !onDisk[name] {
			t.Errorf("task %s is listed, but has no directory", name)
		}
	}
	return listed
}

// seed returns the seed of a randomised test: E2E_SEED replays a failed
// run.
func seed(t *testing.T) int64 {
	s := time.Now().UnixNano()
	if v := os.Getenv("E2E_SEED"); v != "" {
		var err error
		if s, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("E2E_SEED: %v", err)
		}
	}
	t.Logf("seed %d (replay with E2E_SEED=%d)", s, s)
	return s
}

// TestChaos: bursts of concurrent creates, deletions and setTasks while the
// host, or in other rounds its plugin, is SIGKILLed at a random moment.
// Whatever was acknowledged holds afterwards, whatever was not is there
// whole or not at all, and nothing runs on for a deleted task.
func TestChaos(t *testing.T) {
	rng := rand.New(rand.NewSource(seed(t)))
	h := startHost(t)
	f := newFleet("chaos", 24)
	hist := newHistory()
	shims := watchShims(t, h.dataDir)
	// The harness shows the last host's log on a failure; the killed
	// hosts' come too.
	var killed []string
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range killed {
				t.Logf("log of killed host %d:\n%s", i, l)
			}
		}
	})
	// The plugins of killed hosts, with their start times.
	deadPlugins := map[int]uint64{}
	const workers = 4
	for round, victim := range []string{"host", "plugin", "host", "plugin", "host", "plugin", "host", "host"} {
		burst := time.Duration(300+rng.Intn(700)) * time.Millisecond
		killAt := time.Duration(rng.Int63n(int64(burst)))
		plugin := 0
		eventually(t, 15*time.Second, func() bool { plugin = h.pluginNow("process"); return plugin != 0 },
			func() string { return "the process plugin is not running" })
		c := newAPIClient(h.url)
		until := time.Now().Add(burst)
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			counts = map[string]int{}
		)
		for w := 0; w < workers; w++ {
			wrng := rand.New(rand.NewSource(rng.Int63()))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(until) {
					r := f.act(c, wrng, hist, requestMix{create: 5, delete: 3, setTasks: 1})
					mu.Lock()
					counts[fmt.Sprintf("%s %d", r.kind, r.code)]++
					mu.Unlock()
					if r.problem != "" {
						t.Errorf("round %d: %s", round, r.problem)
					}
					if r.err != nil {
						if victim == "host" {
							return // the host is gone; its successor gets the next round
						}
						t.Errorf("round %d: %s: no answer while only the plugin was killed: %v", round, r.kind, r.err)
						return
					}
					if !isAllowed(r, victim == "plugin") {
						t.Errorf("round %d: %s answered %d", round, r.kind, r.code)
					}
				}
			}()
		}
		time.Sleep(killAt)
		if victim == "host" {
			start := procStart(plugin)
			h.kill9()
			deadPlugins[plugin] = start
		} else if err := syscall.Kill(plugin, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		c.close()
		t.Logf("round %d: %s killed after %v of a %v burst: %v", round, victim, killAt, burst, counts)
		if victim == "host" {
			killed = append(killed, h.logs.String())
			h.restart()
		}
		if t.Failed() {
			t.FailNow()
		}
	}

	present := checkSettled(t, h, f, hist)
	t.Logf("%d requests took effect or may have; %d tasks remain", len(hist.ops), len(present))
	seen := shims()
	t.Logf("%d task processes seen", len(seen))
	checkNoLeftovers(t, seen)
	eventually(t, 10*time.Second, func() bool {
		for p, start := range deadPlugins {
			if procStart(p) == start && alive(p) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("plugins outlived their killed host: %v", deadPlugins) })
}
