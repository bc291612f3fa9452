package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/dispatch"
	"github.com/opensandbox/task-executor/host/metrics"
	"github.com/opensandbox/task-executor/sdk"
)

type fixedRuntimes []dispatch.RuntimeStatus

func (f fixedRuntimes) Status() []dispatch.RuntimeStatus { return f }
func (f fixedRuntimes) Refused() map[string]string       { return nil }

func TestRuntimesEndpoint(t *testing.T) {
	rts := fixedRuntimes{
		{Info: sdk.Info{Name: "process", Version: "1.0", Kinds: []sdk.Kind{sdk.KindProcess}}, Path: "/p/process", ProtocolVersion: 1, Healthy: true},
		{Path: "/p/broken", Restarts: 3, LastError: "exec format error"},
		{Info: sdk.Info{Name: "cri", Kinds: []sdk.Kind{sdk.KindContainer}}, Path: "/p/cri", ProtocolVersion: 1},
	}
	h := Handler(listOnly{}, hclog.NewNullLogger(), WithRuntimes(rts))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/runtimes", nil))
	var got []map[string]any
	if w.Code != http.StatusOK || json.Unmarshal(w.Body.Bytes(), &got) != nil {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	var names []string
	for _, r := range got {
		names = append(names, r["name"].(string))
	}
	if strings.Join(names, ",") != ",cri,process" {
		t.Fatalf("order %q: %s", names, w.Body)
	}
	p := got[2]
	if p["pluginPath"] != "/p/process" || p["protocolVersion"] != 1.0 || p["pluginVersion"] != "1.0" ||
		p["healthy"] != true || p["kinds"].([]any)[0] != "process" {
		t.Fatalf("process: %v", p)
	}
	if k, ok := got[0]["kinds"].([]any); !ok || len(k) != 0 || got[0]["lastError"] != "exec format error" {
		t.Fatalf("broken: %v", got[0])
	}
}

func TestMetricsCountRequestsByRoute(t *testing.T) {
	m := metrics.New()
	h := Handler(listOnly{}, hclog.NewNullLogger(), WithMetrics(m))
	for _, p := range []string{"/tasks/a", "/tasks/b", "/health", "/no/such/thing", "/another/one"} {
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, p, nil))
	}
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("BREW", "/health", nil))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	out := w.Body.String()
	for _, want := range []string{
		`task_executor_http_requests_total{code="404",method="GET",route="/tasks/:name"} 2`,
		`task_executor_http_requests_total{code="200",method="GET",route="/health"} 1`,
		`task_executor_http_requests_total{code="404",method="GET",route="unmatched"} 2`,
		`task_executor_http_requests_total{code="405",method="other",route="unmatched"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s", want)
		}
	}
	if strings.Contains(out, `route="/tasks/a"`) {
		t.Errorf("a raw path is a label:\n%s", out)
	}
}
