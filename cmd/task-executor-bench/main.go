// Command task-executor-bench runs the executor's benchmarks and prints one
// table of the figures against their targets (see docs/benchmarks.md).
//
// The load driver is the benchmarks of host/e2e: each starts the real host
// with its real plugins (built from this tree) and drives it over HTTP.
// Beside them run the micro-benchmarks of the hot paths (host/store,
// host/tasks, host/api, sdk/shim). `make bench` runs this command.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// run is one `go test` invocation.
type run struct {
	// dir is the module the packages are in ("": the executor's; "sdk":
	// the SDK, a module of its own).
	dir       string
	pkgs      []string
	bench     string
	benchtime string
	args      []string
}

// row is one line of the table: a figure read from a benchmark's metric.
type row struct {
	figure, target string
	bench, metric  string
	// ok judges the measured value; it may read other metrics of the run.
	ok func(v float64, m metrics) bool
	// baseline, when set, names the metric measured in the same run that
	// the figure is compared with.
	baseline string
}

// metrics maps benchmark name and unit to the value reported.
type metrics map[string]map[string]float64

func main() {
	quick := flag.Bool("quick", false, "tiny sizes (a smoke run: checks that everything works, not how fast)")
	dataRoot := flag.String("data-root", ".bench-data", "directory for the hosts' data directories")
	flag.Parse()

	n := func(full, small string) string {
		if *quick {
			return small
		}
		return full
	}
	root, err := filepath.Abs(*dataRoot)
	if err != nil {
		fail(err)
	}
	scale := n("full", "small")
	// The hosts' data directories stay until the end (see -data-root in
	// host/e2e), and the micro-benchmarks, whose temporary directories go
	// at once, run last: no benchmark pays for the deletions of another.
	runs := []run{
		{pkgs: []string{"./host/e2e"}, bench: "TrueTask|ExitToVisible|ExitToWatch|Create", benchtime: n("500x", "5x"),
			args: []string{"-data-root", root}},
		{pkgs: []string{"./host/e2e"}, bench: "RunningTasks|ManyTasks", benchtime: "1x",
			args: []string{"-data-root", root, "-bench-scale", scale}},
		{pkgs: []string{"./host/e2e"}, bench: "ContainerExit", benchtime: n("40x", "2x"), args: []string{"-data-root", root}},
		{pkgs: []string{"./host/store", "./host/tasks", "./host/api"}, bench: ".", benchtime: n("1s", "10x")},
		{dir: "sdk", pkgs: []string{"./shim"}, bench: ".", benchtime: n("1s", "10x")},
	}
	m := metrics{}
	var raw bytes.Buffer
	for _, r := range runs {
		if err := r.exec(&raw, m); err != nil {
			os.Stdout.Write(raw.Bytes())
			os.RemoveAll(root)
			fail(err)
		}
	}
	os.RemoveAll(root)
	printTable(os.Stdout, m, scale)
}

func (r run) exec(raw io.Writer, m metrics) error {
	args := append([]string{"test", "-run", "^$", "-bench", r.bench, "-benchtime", r.benchtime, "-count", "1", "-timeout", "60m"}, r.pkgs...)
	if len(r.args) > 0 {
		args = append(append(args, "-args"), r.args...)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = r.dir
	var out bytes.Buffer
	cmd.Stdout = io.MultiWriter(&out, raw)
	cmd.Stderr = raw
	fmt.Fprintf(os.Stderr, "running go %s\n", strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go test: %w", err)
	}
	parse(&out, m)
	return nil
}

// parse reads `go test -bench` output: "pkg: <path>" lines, then
// "BenchmarkName-2  N  v unit  v unit..." lines, keyed "<package>.<Name>".
func parse(r io.Reader, m metrics) {
	sc := bufio.NewScanner(r)
	pkg := ""
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "pkg:" {
			pkg = filepath.Base(f[1]) + "."
			continue
		}
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := pkg + strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i]
		}
		if m[name] == nil {
			m[name] = map[string]float64{}
		}
		for i := 2; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				m[name][f[i+1]] = v
			}
		}
	}
}

func atMost(limit float64) func(float64, metrics) bool {
	return func(v float64, _ metrics) bool { return v <= limit }
}

var rows = []row{
	{figure: "process exits -> GET shows terminated, p50 (long poll)", target: "<= 2 ms", bench: "e2e.ExitToVisible", metric: "exit-visible-p50-ms", ok: atMost(2)},
	{figure: "process exits -> GET shows terminated, p99 (long poll)", target: "<= 10 ms", bench: "e2e.ExitToVisible", metric: "exit-visible-p99-ms", ok: atMost(10)},
	{figure: "  the same, client polling every 100 us, p50", target: "", bench: "e2e.ExitToVisiblePolled", metric: "exit-visible-p50-ms"},
	{figure: "  from the write that ends the task (its own exit included), p50", target: "", bench: "e2e.ExitToVisible", metric: "exit-visible-from-write-p50-ms"},
	{figure: "  the task's own exit: write -> the kernel reports it ended, p50", target: "", bench: "e2e.ExitToVisible", metric: "exit-kernel-p50-ms"},
	{figure: "process exits -> a watch reads the event, p50", target: "<= 1 ms", bench: "e2e.ExitToWatch", metric: "exit-watch-p50-ms", ok: atMost(1)},
	{figure: "  the same, p99", target: "", bench: "e2e.ExitToWatch", metric: "exit-watch-p99-ms"},
	{figure: "  from the write that ends the task (its own exit included), p50", target: "", bench: "e2e.ExitToWatch", metric: "exit-watch-from-write-p50-ms"},
	{figure: "container exits -> GET shows terminated, p50 (containerd 2.x)", target: "<= 10 ms", bench: "e2e.ContainerExit/containerd2", metric: "exit-visible-p50-ms", ok: atMost(10)},
	{figure: "  the same, p99", target: "", bench: "e2e.ContainerExit/containerd2", metric: "exit-visible-p99-ms"},
	{figure: "  the same on containerd 1.6, p50", target: "<= 10 ms", bench: "e2e.ContainerExit/containerd1.6", metric: "exit-visible-p50-ms", ok: atMost(10)},
	{figure: "  from the write that ends it (the runtime's own time included), p50", target: "", bench: "e2e.ContainerExit/containerd2", metric: "write-visible-p50-ms"},
	{figure: "/bin/true task: POST -> terminated visible, p50", target: "<= 3x floor", bench: "e2e.TrueTask", metric: "visible-p50-ms",
		baseline: "floor-p50-ms", ok: func(v float64, m metrics) bool { return v <= 3*m["e2e.TrueTask"]["floor-p50-ms"] }},
	{figure: "  floor: bare fork+exec+wait of /bin/true, p50", target: "(baseline)", bench: "e2e.TrueTask", metric: "floor-p50-ms"},
	{figure: "  the same with a cgroup per task vs --task-cgroups=off", target: "<= 1.10x", bench: "e2e.TrueTask", metric: "visible-p50-ms",
		baseline: "nocgroups-p50-ms", ok: func(v float64, m metrics) bool { return v <= 1.10*m["e2e.TrueTask"]["nocgroups-p50-ms"] }},
	{figure: "  --task-cgroups=off, p50", target: "(baseline)", bench: "e2e.TrueTask", metric: "nocgroups-p50-ms"},
	{figure: "  tasks not yet terminated in the 201, asked again (%)", target: "", bench: "e2e.TrueTask", metric: "%-asked-again"},
	{figure: "  the same task, client polling every 100 us, p50", target: "", bench: "e2e.TrueTaskPolled", metric: "visible-p50-ms"},
	{figure: "POST /tasks -> 201, p50", target: "<= 2 ms", bench: "e2e.Create", metric: "post-p50-ms", ok: atMost(2)},
	{figure: "one setTasks of N sleeping tasks -> all running (s)", target: "<= 3 s", bench: "e2e.RunningTasks", metric: "all-running-s", ok: atMost(3)},
	{figure: "  of which until setTasks answered (s)", target: "", bench: "e2e.RunningTasks", metric: "ack-s"},
	{figure: "GET /getTasks with N running tasks, p50", target: "<= 30 ms", bench: "e2e.RunningTasks", metric: "list-p50-ms", ok: atMost(30)},
	{figure: "M tasks known (most finished): GET /getTasks, p50", target: "<= 150 ms", bench: "e2e.ManyTasks", metric: "list-p50-ms", ok: atMost(150)},
	{figure: "M tasks known: host RSS (MiB)", target: "<= 300 MiB", bench: "e2e.ManyTasks", metric: "host-rss-MiB", ok: atMost(300)},
	{figure: "host restart with M tasks -> serving all (s)", target: "<= 3 s", bench: "e2e.ManyTasks", metric: "restart-s", ok: atMost(3)},
	{figure: "N running tasks, idle: CPU of host+plugins+shims (%)", target: "<= 1 % of a core", bench: "e2e.RunningTasks", metric: "idle-cpu-%", ok: atMost(1)},
	{figure: "memory added per running task, PSS (MiB)", target: "<= 1 MiB", bench: "e2e.RunningTasks", metric: "MiB-per-task", ok: atMost(1)},
	{figure: "hot path: store, create a record durably", target: "", bench: "store.Create", metric: "ns/op"},
	{figure: "hot path: store, write a final state", target: "", bench: "store.SetFinal", metric: "ns/op"},
	{figure: "hot path: status event -> visible to GET", target: "", bench: "tasks.ReportToVisible", metric: "ns/op"},
	{figure: "hot path: JSON of a 10,000-task list", target: "", bench: "api.ListJSON", metric: "ns/op"},
	{figure: "hot path: one event for 10 watches, encoding (once for all)", target: "", bench: "api.WatchEncode/shared", metric: "ns/op"},
	{figure: "  the same, each watch encoding it", target: "", bench: "api.WatchEncode/per-watch", metric: "ns/op"},
	{figure: "hot path: a shim runs /bin/true, launch -> exit reported, p50", target: "", bench: "shim.TrueTask/relay=true", metric: "shim-us", baseline: "floor-us"},
	{figure: "  floor in the same loop: bare fork+exec+wait, p50", target: "(baseline)", bench: "shim.TrueTask/relay=true", metric: "floor-us"},
}

func printTable(w io.Writer, m metrics, scale string) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(w, "task-executor benchmarks, %s, %s, %d CPUs, kernel %s, %s; sizes: %s (N=%s, M=%s)\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), cpuModel(), runtime.NumCPU(),
		strings.TrimSpace(string(kernel)), runtime.Version(), scale,
		map[string]string{"full": "1,000", "small": "50"}[scale], map[string]string{"full": "10,000", "small": "200"}[scale])
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\ttarget\tmeasured\tverdict")
	for _, r := range rows {
		bench := r.bench
		v, ok := m[bench][r.metric]
		measured, verdict := "-", ""
		if ok {
			measured = format(v, r.metric)
			if r.ok != nil && scale == "full" {
				verdict = "met"
				if !r.ok(v, m) {
					verdict = "MISSED"
				}
			}
			if r.baseline != "" {
				measured += fmt.Sprintf(" (%.2fx)", v/m[bench][r.baseline])
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.figure, r.target, measured, verdict)
	}
	tw.Flush()
}

func format(v float64, metric string) string {
	switch {
	case metric == "ns/op" && v >= 1e6:
		return fmt.Sprintf("%.2f ms", v/1e6)
	case metric == "ns/op" && v >= 1e3:
		return fmt.Sprintf("%.1f us", v/1e3)
	case metric == "ns/op":
		return fmt.Sprintf("%.0f ns", v)
	case strings.HasSuffix(metric, "-us"):
		return fmt.Sprintf("%.2f ms", v/1e3)
	case strings.HasSuffix(metric, "-ms"):
		return fmt.Sprintf("%.2f ms", v)
	case strings.HasSuffix(metric, "-s"):
		return fmt.Sprintf("%.2f s", v)
	case strings.HasPrefix(metric, "%"):
		return fmt.Sprintf("%.0f %%", v)
	case strings.HasSuffix(metric, "%"):
		return fmt.Sprintf("%.2f %%", v)
	case strings.HasSuffix(metric, "MiB") || strings.HasPrefix(metric, "MiB"):
		return fmt.Sprintf("%.2f MiB", v)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if _, v, ok := strings.Cut(line, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return "unknown CPU"
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "task-executor-bench:", err)
	os.Exit(1)
}
