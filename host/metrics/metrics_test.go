package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("scrape: %d", w.Code)
	}
	b, _ := io.ReadAll(w.Body)
	return string(b)
}

func TestRecordsAndExposes(t *testing.T) {
	m := New()
	m.CountStatesWith(func() StateCounts { return StateCounts{Waiting: 1, Running: 2, Terminated: 3} })
	m.TaskStarted(3 * time.Millisecond)
	m.TaskStarted(-time.Second) // clock skew between host and runtime: counted as 0
	m.TaskTerminated("Succeeded", time.Millisecond, true)
	m.TaskTerminated("", 0, false)
	m.PluginRestarted("process")
	m.HTTPRequest("GET", "/tasks/:name", 200)
	out := scrape(t, m)
	for _, want := range []string{
		`task_executor_tasks{state="waiting"} 1`,
		`task_executor_tasks{state="running"} 2`,
		`task_executor_tasks{state="terminated"} 3`,
		`task_executor_task_starts_total 2`,
		`task_executor_task_start_latency_seconds_count 2`,
		`task_executor_task_start_latency_seconds_bucket{le="0.001"} 1`,
		`task_executor_task_terminations_total{reason="Succeeded"} 1`,
		`task_executor_task_terminations_total{reason="Unknown"} 1`,
		`task_executor_task_exit_visible_latency_seconds_count 1`,
		`task_executor_plugin_restarts_total{runtime="process"} 1`,
		`task_executor_http_requests_total{code="200",method="GET",route="/tasks/:name"} 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

func TestNilIsANoOp(t *testing.T) {
	var m *Metrics
	m.CountStatesWith(func() StateCounts { return StateCounts{} })
	m.TaskStarted(time.Second)
	m.TaskTerminated("Failed", time.Second, true)
	m.PluginRestarted("process")
	m.HTTPRequest("GET", "/health", 200)
}
