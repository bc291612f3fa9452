package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"sigs.k8s.io/yaml"

	"github.com/opensandbox/task-executor/host/metrics"
)

// openAPIDoc is the part of docs/openapi.yaml the test checks.
type openAPIDoc struct {
	OpenAPI    string                                `json:"openapi"`
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components map[string]map[string]json.RawMessage `json:"components"`
}

type openAPIParam struct {
	Name string `json:"name"`
	In   string `json:"in"`
	Ref  string `json:"$ref"`
}

type openAPIOperation struct {
	OperationID string                     `json:"operationId"`
	Parameters  []openAPIParam             `json:"parameters"`
	Responses   map[string]json.RawMessage `json:"responses"`
	Security    []map[string][]string      `json:"security"`
}

type noDirs struct{}

func (noDirs) Dir(string) string { return "" }

func loadOpenAPI(t *testing.T) (openAPIDoc, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatalf("docs/openapi.yaml is not YAML: %v", err)
	}
	var doc openAPIDoc
	if err := json.Unmarshal(j, &doc); err != nil {
		t.Fatalf("docs/openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.0.") {
		t.Fatalf("openapi %q, want 3.0.x", doc.OpenAPI)
	}
	return doc, j
}

// registeredRoutes lists the routes of a handler with every option on, as
// "METHOD /path/{param}".
func registeredRoutes(t *testing.T) []string {
	t.Helper()
	h := Handler(listOnly{}, hclog.NewNullLogger(),
		WithLogs(noDirs{}, make(chan struct{})), WithMetrics(metrics.New()), WithRuntimes(fixedRuntimes{}))
	r, ok := h.(*router)
	if !ok {
		t.Fatalf("Handler returned a %T, not the route-recording router", h)
	}
	param := regexp.MustCompile(`[:*]([^/]+)`)
	var out []string
	for _, rt := range r.routes {
		out = append(out, rt.method+" "+param.ReplaceAllString(rt.path, "{$1}"))
	}
	sort.Strings(out)
	return out
}

var openAPIMethods = map[string]bool{
	"get": true, "put": true, "post": true, "delete": true, "options": true, "head": true, "patch": true, "trace": true,
}

func TestOpenAPIMatchesRouter(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	var documented []string
	for path, item := range doc.Paths {
		for key := range item {
			if openAPIMethods[key] {
				documented = append(documented, strings.ToUpper(key)+" "+path)
			}
		}
	}
	sort.Strings(documented)
	registered := registeredRoutes(t)
	if strings.Join(documented, "\n") != strings.Join(registered, "\n") {
		t.Fatalf("docs/openapi.yaml documents:\n  %s\nthe router registers:\n  %s",
			strings.Join(documented, "\n  "), strings.Join(registered, "\n  "))
	}
}

func TestOpenAPIOperations(t *testing.T) {
	doc, _ := loadOpenAPI(t)
	resolve := func(p openAPIParam) openAPIParam {
		const prefix = "#/components/parameters/"
		if !strings.HasPrefix(p.Ref, prefix) {
			return p
		}
		var out openAPIParam
		if err := json.Unmarshal(doc.Components["parameters"][strings.TrimPrefix(p.Ref, prefix)], &out); err != nil {
			t.Fatalf("parameter %s: %v", p.Ref, err)
		}
		return out
	}
	pathParam := regexp.MustCompile(`\{([^}]+)\}`)
	ids := map[string]string{}
	for path, item := range doc.Paths {
		var shared []openAPIParam
		if raw, ok := item["parameters"]; ok {
			if err := json.Unmarshal(raw, &shared); err != nil {
				t.Fatalf("%s parameters: %v", path, err)
			}
		}
		for method, raw := range item {
			if !openAPIMethods[method] {
				continue
			}
			where := strings.ToUpper(method) + " " + path
			var op openAPIOperation
			if err := json.Unmarshal(raw, &op); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if op.OperationID == "" || ids[op.OperationID] != "" {
				t.Errorf("%s: operationId %q is missing or also %s's", where, op.OperationID, ids[op.OperationID])
			}
			ids[op.OperationID] = where
			inPath := map[string]bool{}
			for _, p := range append(append([]openAPIParam{}, shared...), op.Parameters...) {
				if p = resolve(p); p.In == "path" {
					inPath[p.Name] = true
				}
			}
			for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
				if !inPath[m[1]] {
					t.Errorf("%s: path parameter %s is not declared", where, m[1])
				}
			}
			ok := false
			for code := range op.Responses {
				ok = ok || strings.HasPrefix(code, "2")
			}
			if !ok {
				t.Errorf("%s: no 2xx response", where)
			}
			// RequireToken lets only the probes, GET /health and /readyz,
			// through without a token.
			open := where == http.MethodGet+" /health" || where == http.MethodGet+" /readyz"
			if _, has := op.Responses["401"]; has == open {
				t.Errorf("%s: a 401 response is documented: %v, want %v", where, has, !open)
			}
			if open && (len(op.Security) != 1 || len(op.Security[0]) != 0) {
				t.Errorf("%s: needs no token, so its security must be [{}]", where)
			}
		}
	}
}

// TestOpenAPIRefsResolve: every $ref names a component that exists.
func TestOpenAPIRefsResolve(t *testing.T) {
	doc, j := loadOpenAPI(t)
	var all any
	if err := json.Unmarshal(j, &all); err != nil {
		t.Fatal(err)
	}
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if ref, ok := e.(string); ok && k == "$ref" {
					parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
					if !strings.HasPrefix(ref, "#/components/") || len(parts) != 2 || doc.Components[parts[0]][parts[1]] == nil {
						t.Errorf("%s: $ref %q does not resolve", where, ref)
					}
					continue
				}
				walk(where+"/"+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s/%d", where, i), e)
			}
		}
	}
	walk("", all)
}
