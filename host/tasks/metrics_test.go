package tasks

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opensandbox/task-executor/host/metrics"
)

func metricLine(t *testing.T, m *metrics.Metrics, prefix string) string {
	t.Helper()
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(w.Body.String(), "\n") {
		if strings.HasPrefix(l, prefix+" ") {
			return l
		}
	}
	return ""
}

// TestMetricsCountEachStartOnce: a task's start and termination are
// counted once, also across a plugin restart; a host restart does not count
// again the tasks it finds.
func TestMetricsCountEachStartOnce(t *testing.T) {
	dir := t.TempDir()
	rt := newFake()
	m := metrics.New()
	e := newEnv(t, dir, rt, Config{Metrics: m})
	m.CountStatesWith(e.c.CountStates)
	e.create("a")
	e.create("b")
	e.waitFor("running", func() bool { return e.state("a") == "running" && e.state("b") == "running" })
	e.down()
	e.up(rt) // Recover reports both running again
	rt.exit("a", 0)
	rt.exit("b", 2)
	e.waitFor("terminated", func() bool { return e.state("a") == "terminated:0" && e.state("b") == "terminated:2" })
	for prefix, want := range map[string]string{
		"task_executor_task_starts_total":                           "2",
		`task_executor_task_terminations_total{reason="Succeeded"}`: "1",
		`task_executor_task_terminations_total{reason="Failed"}`:    "1",
		"task_executor_task_start_latency_seconds_count":            "2",
		"task_executor_task_exit_visible_latency_seconds_count":     "2",
		`task_executor_tasks{state="terminated"}`:                   "2",
		`task_executor_tasks{state="running"}`:                      "0",
	} {
		if got := metricLine(t, m, prefix); got != prefix+" "+want {
			t.Errorf("got %q, want %s %s", got, prefix, want)
		}
	}

	// Another host on the same store, with metrics of its own.
	e.close()
	m2 := metrics.New()
	e2 := newEnv(t, dir, rt, Config{Metrics: m2})
	e2.create("c")
	e2.waitFor("c running", func() bool { return e2.state("c") == "running" })
	if got := metricLine(t, m2, "task_executor_task_starts_total"); got != "task_executor_task_starts_total 1" {
		t.Errorf("after a restart: %q, want 1 (c only)", got)
	}
}
