package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/host/api"

	"github.com/opensandbox/task-executor/internal/containerdtest"
	"github.com/opensandbox/task-executor/sdk/client"
)

// These benchmarks are the load driver of `make bench`: each starts the
// real host with its real plugins and drives it over HTTP. Each reports its
// figures with b.ReportMetric; cmd/task-executor-bench runs them and prints
// the table. Sizes come from -bench-scale: "full" for the figures of
// docs/benchmarks.md, "small" (the default) for the smoke run in `make test`,
// which checks that they work, not how fast.
var benchScale = flag.String("bench-scale", "small", "small (smoke run) or full (the documented figures)")

func scaled(small, full int) int {
	if *benchScale == "full" {
		return full
	}
	return small
}

// pollInterval is how often the benchmarks' client asks for a task.
const pollInterval = 100 * time.Microsecond

// pause sleeps in the kernel: a Go timer this short is rounded up to the
// runtime poller's millisecond, which would make the client, not the
// executor, the slowest part of the measurement.
func pause(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	_ = unix.Nanosleep(&ts, nil)
}

// awaitTerminated returns once GET shows the task terminated: with one long
// poll, or polling every pollInterval, as a client waiting for the end
// would: it looks only for the state's key.
func (h *hostProc) awaitTerminated(name string, longPoll bool) {
	for {
		if longPoll {
			_, body := h.do("GET", "/tasks/"+name+"?wait=30s", nil)
			if bytes.Contains(body, []byte(`"terminated":`)) {
				return
			}
			continue
		}
		if _, body := h.do("GET", "/tasks/"+name, nil); bytes.Contains(body, []byte(`"terminated":`)) {
			return
		}
		// A client polling flat out would take a core from the executor
		// on this 2-core machine; this is still far finer than any real
		// client polls.
		pause(pollInterval)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reportPercentiles reports the p50 and p99 of ds as <unit>-p50-ms and
// <unit>-p99-ms.
func reportPercentiles(b *testing.B, unit string, ds []time.Duration) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	p50 := ds[len(ds)/2]
	b.ReportMetric(ms(p50), unit+"-p50-ms")
	b.ReportMetric(ms(ds[len(ds)*99/100]), unit+"-p99-ms")
	return p50
}

// BenchmarkTrueTask: POST /tasks of a /bin/true task until GET shows it
// terminated; in the same run, the floor: a bare fork+exec+wait of
// /bin/true from the client. The client waits with a long poll (GET
// ?wait=), so the figure is the executor's, not the client's polling;
// BenchmarkTrueTaskPolled is the same with a polling client.
func BenchmarkTrueTask(b *testing.B) { benchTrueTask(b, true) }

// BenchmarkTrueTaskPolled is BenchmarkTrueTask with a client that polls
// every pollInterval.
func BenchmarkTrueTaskPolled(b *testing.B) { benchTrueTask(b, false) }

func benchTrueTask(b *testing.B, longPoll bool) {
	h := startHost(b, "--log-level", "info")
	// The same host without task cgroups, measured in the same loop so
	// that both see the same machine: what a cgroup per task costs.
	bare := startHost(b, "--log-level", "info", "--task-cgroups", "off")
	floor := make([]time.Duration, 0, b.N)
	lat := make([]time.Duration, 0, b.N)
	latBare := make([]time.Duration, 0, b.N)
	waited := 0
	roundTrip := func(h *hostProc, name string) time.Duration {
		began := time.Now()
		// The answer to the create is the task once its record is
		// durable: when already terminated, there is nothing more to
		// wait for.
		if created := h.mustDo(201, "POST", "/tasks", processTask(name, "/bin/true")); !bytes.Contains(created, []byte(`"terminated":`)) {
			h.awaitTerminated(name, longPoll)
			waited++
		}
		d := time.Since(began)
		if t, _ := h.get(name); t.Status.State.Terminated.ExitCode != 0 {
			b.Fatalf("task %s: %+v", name, t.Status.State.Terminated)
		}
		return d
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		began := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, time.Since(began))
		name := fmt.Sprintf("true-%d", i)
		// Which host goes first alternates: neither always finds the
		// machine just after the other's burst.
		if i%2 == 0 {
			lat = append(lat, roundTrip(h, name))
			latBare = append(latBare, roundTrip(bare, name))
		} else {
			latBare = append(latBare, roundTrip(bare, name))
			lat = append(lat, roundTrip(h, name))
		}
	}
	b.StopTimer()
	v := reportPercentiles(b, "visible", lat)
	f := reportPercentiles(b, "floor", floor)
	nc := reportPercentiles(b, "nocgroups", latBare)
	b.ReportMetric(100*float64(waited)/float64(2*b.N), "%-asked-again")
	b.ReportMetric(float64(v)/float64(f), "x-floor")
	b.ReportMetric(float64(v)/float64(nc), "x-nocgroups")
}

// BenchmarkExitToVisible: from the moment a running task's process exits
// until GET shows it terminated (long poll; BenchmarkExitToVisiblePolled
// polls). The task blocks reading a FIFO; the client writes the byte that
// ends it, and learns the moment of the exit as any supervisor does, from
// the kernel (see benchExits).
func BenchmarkExitToVisible(b *testing.B) { benchExitToVisible(b, true) }

// BenchmarkExitToVisiblePolled is BenchmarkExitToVisible with a polling
// client.
func BenchmarkExitToVisiblePolled(b *testing.B) { benchExitToVisible(b, false) }

func benchExitToVisible(b *testing.B, longPoll bool) {
	h := startHost(b, "--log-level", "info")
	running := func(name string) {
		eventually(b, 10*time.Second, func() bool {
			t, _ := h.get(name)
			return t.Status.State.Running != nil
		}, func() string { return "the task never ran" })
	}
	benchExits(b, h, "exit-visible", running, func(name string) time.Time {
		h.awaitTerminated(name, longPoll)
		return time.Now()
	})
}

// benchExits runs b.N tasks that each block on a FIFO until the client
// writes the byte that ends them, and measures until terminated (which
// returns when the end was read) says the end is seen. The moment of the
// exit is when the kernel tells a waiter the process has ended: a pidfd the
// benchmark holds for the task's process becomes readable, as the shim's
// does. Between the write and that moment (exit-kernel) the task wakes,
// reads, writes its byte out and is torn down by the kernel: the task's own
// time and the kernel's, tenths of a millisecond on a virtual machine, and
// no supervisor can learn of an exit before it. The figure from the write
// is reported too (<metric>-from-write).
func benchExits(b *testing.B, h *hostProc, metric string, running func(name string), terminated func(name string) time.Time) {
	dir := b.TempDir()
	lat := make([]time.Duration, 0, b.N)
	fromWrite := make([]time.Duration, 0, b.N)
	kernel := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		name := fmt.Sprintf("exit-%d", i)
		fifo := filepath.Join(dir, name)
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			b.Fatal(err)
		}
		// The task says its PID itself (exec keeps it): finding it in /proc
		// would make the kernel's work at every process's exit dearer (each
		// /proc entry looked up is torn down with its process).
		h.mustDo(201, "POST", "/tasks", processTask(name, "sh", "-c", `echo $$ >"$0.pid" && exec head -c1 "$0"`, fifo))
		running(name)
		exited := awaitExit(b, pidFromFile(b, fifo+".pid"))
		began := releaseFIFO(b, fifo)
		seen := terminated(name)
		ended := <-exited
		lat = append(lat, seen.Sub(ended))
		fromWrite = append(fromWrite, seen.Sub(began))
		kernel = append(kernel, ended.Sub(began))
	}
	b.StopTimer()
	reportPercentiles(b, metric, lat)
	reportPercentiles(b, metric+"-from-write", fromWrite)
	reportPercentiles(b, "exit-kernel", kernel)
}

// pidFromFile reads the PID a task wrote to path, once it is whole.
func pidFromFile(b *testing.B, path string) int {
	var pid int
	eventually(b, 5*time.Second, func() bool {
		data, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(data, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(data)))
		return err == nil
	}, func() string { return "the task never wrote its PID to " + path })
	return pid
}

// awaitExit returns a channel that gets the time the kernel reports the
// process pid ended, read the moment the pidfd wakes its waiter.
func awaitExit(b *testing.B, pid int) <-chan time.Time {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		b.Fatal(err)
	}
	exited := make(chan time.Time, 1)
	go func() {
		defer unix.Close(fd)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err != unix.EINTR {
				break
			}
		}
		exited <- time.Now()
	}()
	return exited
}

// BenchmarkExitToWatch: from the moment a running task's process exits
// until a watch (GET /getTasks?watch=true) has read the event that says
// so. Measured as BenchmarkExitToVisible is.
func BenchmarkExitToWatch(b *testing.B) {
	h := startHost(b, "--log-level", "info")
	resp, err := http.Get(h.url + "/getTasks?watch=true")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	type seen struct {
		name              string
		running, finished bool
		at                time.Time // when the event was read
	}
	events := make(chan seen, 64)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			// Read now: what the client's decoding costs is its own.
			at := time.Now()
			var ev struct {
				Object client.Task
			}
			if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Object.Name != "" {
				st := ev.Object.Status.State
				events <- seen{ev.Object.Name, st.Running != nil, st.Terminated != nil, at}
			}
		}
		close(events)
	}()
	await := func(name string, finished bool) time.Time {
		for ev := range events {
			if ev.name == name && (ev.finished || !finished && ev.running) {
				return ev.at
			}
		}
		b.Fatal("the watch ended")
		return time.Time{}
	}
	benchExits(b, h, "exit-watch", func(name string) { await(name, false) }, func(name string) time.Time { return await(name, true) })
}

// BenchmarkCreate: POST /tasks until the 201.
func BenchmarkCreate(b *testing.B) {
	h := startHost(b, "--log-level", "info")
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		began := time.Now()
		h.mustDo(201, "POST", "/tasks", processTask(fmt.Sprintf("create-%d", i), "true"))
		lat = append(lat, time.Since(began))
	}
	b.StopTimer()
	reportPercentiles(b, "post", lat)
}

// BenchmarkRunningTasks: one setTasks of many sleeping tasks until all run;
// then, with them running: GET /getTasks, the CPU the executor uses while
// nothing happens, and the memory it adds per task.
func BenchmarkRunningTasks(b *testing.B) {
	n := scaled(50, 1000)
	idle := time.Duration(scaled(1, 10)) * time.Second
	h := startHost(b, "--log-level", "info")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tasks := make([]any, n)
		for j := range tasks {
			tasks[j] = processTask(fmt.Sprintf("run-%d-%04d", i, j), "sleep", "3600")
		}
		began := time.Now()
		h.mustDo(200, "POST", "/setTasks", tasks)
		b.ReportMetric(time.Since(began).Seconds(), "ack-s")
		for running(h) < n {
			pause(10 * time.Millisecond)
		}
		b.ReportMetric(time.Since(began).Seconds(), "all-running-s")

		lat := make([]time.Duration, 0, 30)
		for k := 0; k < 30; k++ {
			t0 := time.Now()
			h.mustDo(200, "GET", "/getTasks", nil)
			lat = append(lat, time.Since(t0))
		}
		reportPercentiles(b, "list", lat)

		procs := h.executorProcesses()
		if len(procs) < n+2 {
			b.Fatalf("found %d executor processes, want host, plugin and %d shims", len(procs), n)
		}
		before := cpuTicks(procs)
		time.Sleep(idle)
		used := float64(cpuTicks(procs)-before) / float64(ticksPerSecond) / idle.Seconds()
		b.ReportMetric(100*used, "idle-cpu-%")
		b.ReportMetric(float64(pss(procs))/1024/float64(n), "MiB-per-task")

		h.mustDo(200, "POST", "/setTasks", []any{})
		eventually(b, time.Minute, func() bool { return len(h.list()) == 0 }, func() string { return "the tasks were not deleted" })
	}
}

// BenchmarkManyTasks: many tasks known, most finished: GET /getTasks, the
// host's memory, and a restart of the host until it serves them all.
func BenchmarkManyTasks(b *testing.B) {
	n := scaled(200, 10000)
	sleepers := scaled(10, 100)
	// The tasks and the sleepers exceed the default --max-tasks.
	h := startHost(b, "--log-level", "info", "--max-tasks", strconv.Itoa(2*(n+sleepers)))
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		work := make(chan int)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range work {
					cmd := []string{"true"}
					if j < sleepers {
						cmd = []string{"sleep", "3600"}
					}
					h.mustDo(201, "POST", "/tasks", processTask(fmt.Sprintf("many-%d-%05d", i, j), cmd...))
				}
			}()
		}
		for j := 0; j < n; j++ {
			work <- j
		}
		close(work)
		wg.Wait()
		eventually(b, 5*time.Minute, func() bool { return settled(h, n) }, func() string { return "the tasks never settled" })

		lat := make([]time.Duration, 0, 20)
		for k := 0; k < 20; k++ {
			t0 := time.Now()
			h.mustDo(200, "GET", "/getTasks", nil)
			lat = append(lat, time.Since(t0))
		}
		reportPercentiles(b, "list", lat)
		b.ReportMetric(float64(rss(h.cmd.Process.Pid))/1024, "host-rss-MiB")

		h.stop()
		began := time.Now()
		h.restart()
		for len(h.list()) < n {
			pause(time.Millisecond)
		}
		b.ReportMetric(time.Since(began).Seconds(), "restart-s")
	}
}

// running counts the tasks shown running.
func running(h *hostProc) int {
	n := 0
	for _, t := range h.list() {
		if t.Status.State.Running != nil {
			n++
		}
	}
	return n
}

// settled reports whether n tasks are known and each is running or
// terminated.
func settled(h *hostProc, n int) bool {
	_, body := h.do("GET", "/getTasks", nil)
	var ts []api.Task
	if json.Unmarshal(body, &ts) != nil || len(ts) != n {
		return false
	}
	for _, t := range ts {
		if t.Status.State.Waiting != nil {
			return false
		}
	}
	return true
}

// executorProcesses returns the host, its plugins and their shims (not the
// tasks): the host's descendants that run one of the executor's binaries.
func (h *hostProc) executorProcesses() []int {
	bins := map[string]bool{
		h.executable(): true, // the host and its built-in plugins
		// The shim, run from the host's sealed file in memory.
		"/memfd:task-executor-shim (deleted)": true,
	}
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err == nil && bins[exe] && belongsTo(pid, h) {
			out = append(out, pid)
		}
	}
	return out
}

// belongsTo reports whether pid is this host or one of its descendants.
func belongsTo(pid int, h *hostProc) bool {
	for p := pid; p > 1; p = procPPID(p) {
		if p == h.cmd.Process.Pid {
			return true
		}
	}
	return false
}

// ticksPerSecond is the kernel's USER_HZ, the unit of /proc/<pid>/stat's
// CPU times; 100 on every Linux this runs on.
const ticksPerSecond = 100

// cpuTicks sums the user and system time of pids and their dead, reaped
// children.
func cpuTicks(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		for _, i := range []int{11, 12} { // utime, stime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			sum += v
		}
	}
	return sum
}

// pss sums the proportional set size of pids, in KiB.
func pss(pids []int) int64 {
	var sum int64
	for _, pid := range pids {
		sum += statusKiB(fmt.Sprintf("/proc/%d/smaps_rollup", pid), "Pss:")
	}
	return sum
}

// rss returns a process's resident set size, in KiB.
func rss(pid int) int64 { return statusKiB(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") }

func statusKiB(path, key string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key) {
			f := strings.Fields(line)
			v, _ := strconv.ParseInt(f[1], 10, 64)
			return v
		}
	}
	return 0
}

// BenchmarkContainerExit: a container task's exit until GET (long poll)
// shows it terminated, from the exit as the runtime records it (its
// finishedAt, in the task's exit record with nanoseconds): on containerd
// 2.x (built from the Go module proxy) and on Debian's 1.6. The
// container waits on a FIFO in a hostPath volume; from the benchmark's
// write to the FIFO is reported too, which adds the runtime's own time to
// see the process exit.
func BenchmarkContainerExit(b *testing.B) {
	for _, tc := range []struct {
		name string
		env  func(testing.TB) *containerdtest.Env
	}{{"containerd2", containerdtest.RequireEvented}, {"containerd1.6", containerdtest.Require}} {
		b.Run(tc.name, func(b *testing.B) {
			env := tc.env(b)
			dir := b.TempDir()
			h := startHost(b, "--log-level", "info", "--enable-container-mode", "--cri-socket", env.Socket, "--allowed-host-path", dir)
			fromExit := make([]time.Duration, 0, b.N)
			fromWrite := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				name := fmt.Sprintf("cexit-%d", i)
				if err := unix.Mkfifo(filepath.Join(dir, name), 0o666); err != nil {
					b.Fatal(err)
				}
				h.mustDo(201, "POST", "/tasks", map[string]any{"name": name, "spec": map[string]any{
					"container": map[string]any{"name": "c", "image": env.BusyboxImage, "imagePullPolicy": "IfNotPresent",
						"command":      []string{"head", "-c1", "/fifo/" + name},
						"volumeMounts": []map[string]any{{"name": "fifo", "mountPath": "/fifo"}}},
					"volumes": []map[string]any{{"name": "fifo", "hostPath": map[string]any{"path": dir}}},
				}})
				began := releaseFIFO(b, filepath.Join(dir, name))
				h.awaitTerminated(name, true)
				visible := time.Now()
				b.StopTimer()
				fromWrite = append(fromWrite, visible.Sub(began))
				fromExit = append(fromExit, visible.Sub(exitRecorded(b, filepath.Join(h.dataDir, name))))
				h.mustDo(204, "DELETE", "/tasks/"+name, nil)
				b.StartTimer()
			}
			b.StopTimer()
			reportPercentiles(b, "exit-visible", fromExit)
			reportPercentiles(b, "write-visible", fromWrite)
		})
	}
}

// releaseFIFO lets a task waiting on a FIFO (head -c1) go: it opens the
// FIFO for writing, which waits for the task to open it for reading, starts
// the timer and writes, and returns when it wrote.
func releaseFIFO(b *testing.B, path string) time.Time {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	_, err = f.Write([]byte{'x'})
	began := time.Now()
	f.Close()
	if err != nil {
		b.Fatal(err)
	}
	return began
}

// exitRecorded reads when a container task exited, as the runtime said,
// from the cri plugin's exit record in its directory (written once the
// status is out).
func exitRecorded(b *testing.B, dir string) time.Time {
	var rec struct{ FinishedAt time.Time }
	eventually(b, 10*time.Second, func() bool {
		data, err := os.ReadFile(filepath.Join(dir, "cri-exit.json"))
		return err == nil && json.Unmarshal(data, &rec) == nil
	}, func() string { return "no exit record in " + dir })
	return rec.FinishedAt
}
