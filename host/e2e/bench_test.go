package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"sort"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkTrueTask measures, over real HTTP against the real binaries,
// the time from POST /tasks of a /bin/true task until GET /tasks/{name}
// first shows it terminated; and, in the same run, the floor: a bare
// fork+exec+wait of /bin/true. It reports the p50 and p99 of both.
func BenchmarkTrueTask(b *testing.B) {
	h := startHost(b, "--log-level", "info")
	floor := make([]time.Duration, 0, b.N)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		began := time.Now()
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, time.Since(began))

		name := fmt.Sprintf("true-%d", i)
		began = time.Now()
		h.mustDo(201, "POST", "/tasks", processTask(name, "/bin/true"))
		for {
			// The poll only looks for the state's key, as a client waiting
			// for the end would; the task is decoded in full once it ends.
			if _, body := h.do("GET", "/tasks/"+name, nil); bytes.Contains(body, []byte(`"terminated":`)) {
				break
			}
			// A client polling flat out would take a core from the
			// executor on this 2-core machine; this is still far finer
			// than any real client polls.
			pause(pollInterval)
		}
		lat = append(lat, time.Since(began))
		if t, _ := h.get(name); t.Status.State.Terminated.ExitCode != 0 {
			b.Fatalf("task %s: %+v", name, t.Status.State.Terminated)
		}
	}
	b.StopTimer()
	report := func(unit string, ds []time.Duration) {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		b.ReportMetric(ms(ds[len(ds)/2]), unit+"-p50-ms")
		b.ReportMetric(ms(ds[len(ds)*99/100]), unit+"-p99-ms")
	}
	report("visible", lat)
	report("floor", floor)
}

// pollInterval is how often the benchmarks' client asks for a task.
const pollInterval = 250 * time.Microsecond

// pause sleeps in the kernel: a Go timer this short is rounded up to the
// runtime poller's millisecond, which would make the client, not the
// executor, the slowest part of the measurement.
func pause(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	_ = unix.Nanosleep(&ts, nil)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
