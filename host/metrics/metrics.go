// Package metrics holds the host's Prometheus collectors, on a registry of
// its own so that nothing else in the process (a library registering on the
// global registry) shows up in GET /metrics. The recording methods are safe
// on a nil *Metrics, so the packages that report to it work without one.
package metrics

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric of the host.
const Namespace = "task_executor"

// StateCounts is how many tasks are in each state.
type StateCounts struct {
	Waiting, Running, Terminated int
}

// Metrics is the host's set of collectors.
type Metrics struct {
	reg            *prometheus.Registry
	starts         prometheus.Counter
	terminations   *prometheus.CounterVec
	startLatency   prometheus.Histogram
	exitVisible    prometheus.Histogram
	pluginRestarts *prometheus.CounterVec
	httpRequests   *prometheus.CounterVec

	statesMu sync.Mutex
	states   func() StateCounts
	statesD  *prometheus.Desc

	usageMu              sync.Mutex
	usage                func(context.Context) []TaskUsage
	cpuD, memD, memPeakD *prometheus.Desc

	logDropped atomic.Pointer[func() uint64]
}

// TaskUsage is what one task has used, as its runtime reports it.
type TaskUsage struct {
	Task                         string
	CPUSeconds                   float64
	MemoryBytes, MemoryPeakBytes int64
}

// usageTimeout bounds how long a scrape waits for the runtimes' figures: a
// slow plugin costs a scrape its task series, never the scrape itself.
const usageTimeout = 2 * time.Second

// New returns the collectors, registered on a new registry together with the
// Go runtime's and the process's standard collectors.
func New() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		starts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "task_starts_total",
			Help: "Tasks that started running.",
		}),
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "task_terminations_total",
			Help: "Tasks that terminated, by the reason of their terminated state.",
		}, []string{"reason"}),
		// Seconds to tenths of a minute: a start is a fork when all is well,
		// and waits for a free slot or a main container when it is not.
		startLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "task_start_latency_seconds",
			Help:    "Time from a task's acceptance to the start of its process, as the runtime reports it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		// Exits are pushed by the runtimes: this is milliseconds when all is
		// well; the top buckets catch exits noticed only by the safety-net
		// reconcile or after a restart.
		exitVisible: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "task_exit_visible_latency_seconds",
			Help:    "Time from a task's exit (finishedAt as the runtime reports it) to the host recording it.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 5, 30},
		}),
		pluginRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "plugin_restarts_total",
			Help: "Runtime plugin processes started again after they stopped, by runtime.",
		}, []string{"runtime"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "http_requests_total",
			Help: "HTTP requests answered, by method, route pattern and status code.",
		}, []string{"method", "route", "code"}),
		statesD: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "tasks"),
			"Tasks the executor keeps, by state.", []string{"state"}, nil),
		cpuD: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "task_cpu_seconds_total"),
			"CPU time a task has used, user and system, as its cgroup counts it.", []string{"task"}, nil),
		memD: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "task_memory_bytes"),
			"Memory a task's cgroup holds now.", []string{"task"}, nil),
		memPeakD: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "task_memory_peak_bytes"),
			"The most memory a task's cgroup has held.", []string{"task"}, nil),
	}
	logDropped := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: Namespace, Name: "log_lines_dropped_total",
		Help: "Log lines dropped because stderr did not take them in time (its reader fell behind or stopped).",
	}, func() float64 {
		if fn := m.logDropped.Load(); fn != nil {
			return float64((*fn)())
		}
		return 0
	})
	m.reg.MustRegister(m.starts, m.terminations, m.startLatency, m.exitVisible,
		m.pluginRestarts, m.httpRequests, logDropped, stateCollector{m}, usageCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the private registry the collectors are on.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// CountDroppedLogLinesWith makes the dropped log lines counter ask fn at
// every scrape.
func (m *Metrics) CountDroppedLogLinesWith(fn func() uint64) {
	if m == nil || fn == nil {
		return
	}
	m.logDropped.Store(&fn)
}

// CountStatesWith makes the tasks-by-state gauge ask fn at every scrape:
// the controller's table is the truth, and counting it on demand cannot
// drift the way a gauge kept up to date by every transition could.
func (m *Metrics) CountStatesWith(fn func() StateCounts) {
	if m == nil {
		return
	}
	m.statesMu.Lock()
	m.states = fn
	m.statesMu.Unlock()
}

// ReportUsageWith makes the per-task usage series ask fn at every scrape,
// so that a deleted task's series go with it and nothing is kept between
// scrapes.
func (m *Metrics) ReportUsageWith(fn func(context.Context) []TaskUsage) {
	if m == nil {
		return
	}
	m.usageMu.Lock()
	m.usage = fn
	m.usageMu.Unlock()
}

// TaskStarted records a task that started running, latency after it was
// accepted.
func (m *Metrics) TaskStarted(latency time.Duration) {
	if m == nil {
		return
	}
	m.starts.Inc()
	m.startLatency.Observe(max(latency, 0).Seconds())
}

// TaskTerminated records a task's termination; exitToVisible is the time
// from its exit to the host recording it, not observed when unknown.
func (m *Metrics) TaskTerminated(reason string, exitToVisible time.Duration, known bool) {
	if m == nil {
		return
	}
	if reason == "" {
		reason = "Unknown"
	}
	m.terminations.WithLabelValues(reason).Inc()
	if known {
		m.exitVisible.Observe(max(exitToVisible, 0).Seconds())
	}
}

// PluginRestarted records that a runtime's plugin is being started again.
func (m *Metrics) PluginRestarted(runtime string) {
	if m == nil {
		return
	}
	m.pluginRestarts.WithLabelValues(runtime).Inc()
}

// HTTPRequest records an answered request. route must be a route pattern
// (or another value from a small set), never a raw path, and method one of
// the standard methods, so that the series stay few.
func (m *Metrics) HTTPRequest(method, route string, code int) {
	if m == nil {
		return
	}
	m.httpRequests.WithLabelValues(method, route, strconv.Itoa(code)).Inc()
}

// stateCollector reports the tasks by state, counted at scrape.
type stateCollector struct{ m *Metrics }

func (c stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.statesD }

func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.statesMu.Lock()
	fn := c.m.states
	c.m.statesMu.Unlock()
	var n StateCounts
	if fn != nil {
		n = fn()
	}
	for _, s := range []struct {
		state string
		n     int
	}{{"waiting", n.Waiting}, {"running", n.Running}, {"terminated", n.Terminated}} {
		ch <- prometheus.MustNewConstMetric(c.m.statesD, prometheus.GaugeValue, float64(s.n), s.state)
	}
}

// usageCollector reports each task's usage, asked of the runtimes at scrape.
type usageCollector struct{ m *Metrics }

func (c usageCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.m.cpuD
	ch <- c.m.memD
	ch <- c.m.memPeakD
}

func (c usageCollector) Collect(ch chan<- prometheus.Metric) {
	c.m.usageMu.Lock()
	fn := c.m.usage
	c.m.usageMu.Unlock()
	if fn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), usageTimeout)
	defer cancel()
	for _, u := range fn(ctx) {
		ch <- prometheus.MustNewConstMetric(c.m.cpuD, prometheus.CounterValue, u.CPUSeconds, u.Task)
		ch <- prometheus.MustNewConstMetric(c.m.memD, prometheus.GaugeValue, float64(u.MemoryBytes), u.Task)
		if u.MemoryPeakBytes > 0 {
			ch <- prometheus.MustNewConstMetric(c.m.memPeakD, prometheus.GaugeValue, float64(u.MemoryPeakBytes), u.Task)
		}
	}
}
