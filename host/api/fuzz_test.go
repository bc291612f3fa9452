package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// The fuzz targets hold the handlers to what a client may rely on whatever
// it sends: never a 5xx (a panic is one, through the router's panic
// handler), and a request reaches the controller, and is acknowledged,
// only if what it asks for is valid. Validity is judged here without the
// package's validate, so a mistake there cannot hide itself.

// dnsSubdomain is RFC 1123's subdomain, as Kubernetes names are.
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// nameProblem says why a task name must be refused, or "".
func nameProblem(name string) string {
	switch {
	case len(name) == 0 || len(name) > 253:
		return "length"
	case !dnsSubdomain.MatchString(name):
		return "not a DNS-1123 subdomain"
	case strings.Contains(name, "/"), strings.Contains(name, ".."), strings.HasPrefix(name, "."):
		return "reaches outside its directory"
	case !filepath.IsLocal(name), filepath.Base(name) != name:
		return "not a single local path element"
	}
	return ""
}

// taskProblem says why a task the controller was handed must not have
// reached it, or "".
func taskProblem(t tasks.NewTask) string {
	if p := nameProblem(t.Name); p != "" {
		return "name " + p
	}
	switch t.Spec.Kind() {
	case sdk.KindProcess:
		p := t.Spec.Process
		if len(p.Command) == 0 || p.Command[0] == "" {
			return "no command"
		}
		if p.WorkingDir != "" && !filepath.IsAbs(p.WorkingDir) {
			return "relative working directory"
		}
		if p.TimeoutSeconds != nil && *p.TimeoutSeconds <= 0 {
			return "timeout not positive"
		}
	case sdk.KindContainer:
		if strings.TrimSpace(t.Spec.Container.Image) == "" {
			return "no image"
		}
	default:
		return "neither or both of process and container"
	}
	return ""
}

// fuzzTasks accepts everything and keeps what it was handed.
type fuzzTasks struct {
	listOnly
	created [][]tasks.NewTask
}

func (f *fuzzTasks) Create(_ context.Context, t tasks.NewTask) (tasks.Task, error) {
	f.created = append(f.created, []tasks.NewTask{t})
	return tasks.Task{Name: t.Name, Spec: t.Spec, State: sdk.Waiting(sdk.ReasonInitialized, "")}, nil
}

func (f *fuzzTasks) Sync(_ context.Context, desired []tasks.NewTask) ([]tasks.Task, error) {
	f.created = append(f.created, desired)
	out := make([]tasks.Task, len(desired))
	for i, d := range desired {
		out[i] = tasks.Task{Name: d.Name, Spec: d.Spec, State: sdk.Waiting(sdk.ReasonInitialized, "")}
	}
	return out, nil
}

// serveFuzz sends body to path and checks the invariants common to both
// endpoints; it returns what reached the controller.
func serveFuzz(t *testing.T, path string, body []byte) []tasks.NewTask {
	backend := &fuzzTasks{}
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	Handler(backend, hclog.NewNullLogger()).ServeHTTP(w, req)
	if w.Code >= 500 {
		t.Fatalf("POST %s %q: %d %s", path, body, w.Code, w.Body)
	}
	ok := w.Code >= 200 && w.Code < 300
	if !json.Valid(w.Body.Bytes()) {
		t.Fatalf("POST %s %q: the answer is not JSON: %q", path, body, w.Body)
	}
	if !ok {
		var e Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != w.Code || e.Message == "" {
			t.Fatalf("POST %s %q: %d with an error body %s", path, body, w.Code, w.Body)
		}
		if len(backend.created) != 0 {
			t.Fatalf("POST %s %q: refused with %d, but the controller was handed %+v", path, body, w.Code, backend.created)
		}
		return nil
	}
	if len(backend.created) != 1 {
		t.Fatalf("POST %s %q: %d, but the controller was called %d times", path, body, w.Code, len(backend.created))
	}
	seen := map[string]bool{}
	for _, nt := range backend.created[0] {
		if p := taskProblem(nt); p != "" {
			t.Fatalf("POST %s %q: %d, the controller was handed task %q: %s", path, body, w.Code, nt.Name, p)
		}
		if seen[nt.Name] {
			t.Fatalf("POST %s %q: %d with task %q twice", path, body, w.Code, nt.Name)
		}
		seen[nt.Name] = true
	}
	return backend.created[0]
}

var fuzzBodies = []string{
	`{"name":"t","spec":{"process":{"command":["sh","-c"],"args":["exit 3"],"env":[{"name":"A","value":"b"}],"workingDir":"/tmp","timeoutSeconds":5}}}`,
	`{"name":"t","process":{"command":["true"]}}`,
	`{"name":"t","spec":{"process":{"command":["true"]}},"process":{"command":["true"]},"status":{"state":{"waiting":{}}}}`,
	`{"name":"t","spec":{"process":{"command":["true"]}},"process":{"command":["false"]}}`,
	`{"name":"t","spec":{"container":{"name":"c","image":"busybox"},"timeoutSeconds":3}}`,
	`{"name":"t","spec":{"process":{"command":["true"]},"container":{"image":"busybox"}}}`,
	`{"name":"t","spec":{}}`,
	`{"name":"../etc","spec":{"process":{"command":["true"]}}}`,
	`{"name":"a/b","spec":{"process":{"command":["true"]}}}`,
	`{"name":".hidden","spec":{"process":{"command":["true"]}}}`,
	`{"name":"a..b","spec":{"process":{"command":["true"]}}}`,
	`{"name":"UPPER","spec":{"process":{"command":["true"]}}}`,
	`{"name":"t","spec":{"process":{"command":[""]}}}`,
	`{"name":"t","spec":{"process":{"command":["true"],"workingDir":"tmp"}}}`,
	`{"name":"t","spec":{"process":{"command":["true"],"timeoutSeconds":-1}}}`,
	`{"name":"t","spec":{"process":{"command":["true"],"env":[{"name":"1=2","value":""}]}}}`,
	`{"name":"t","spec":{"process":{"command":["true"]}},"unknown":1}`,
	`{"name":"t","spec":{"process":{"command":["true"]}}} {}`,
	`{"name":"t","name":"u","spec":{"process":{"command":["true"]}}}`,
	`{"name":1e999}`,
	`null`, `[]`, `{}`, `"x"`, ``, `{`, "\x00",
}

func FuzzCreateBody(f *testing.F) {
	for _, b := range fuzzBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		created := serveFuzz(t, "/tasks", body)
		if created != nil && len(created) != 1 {
			t.Fatalf("POST /tasks %q handed the controller %d tasks", body, len(created))
		}
	})
}

func FuzzSetTasksBody(f *testing.F) {
	for _, b := range fuzzBodies {
		f.Add([]byte("[" + b + "]"))
	}
	f.Add([]byte(`[]`))
	f.Add([]byte(`[{"name":"a","process":{"command":["true"]}},{"name":"b","spec":{"process":{"command":["true"]}}}]`))
	f.Add([]byte(`[{"name":"a","process":{"command":["true"]}},{"name":"a","process":{"command":["true"]}}]`))
	f.Add([]byte(`[{"name":"a","process":{"command":["true"]}},null]`))
	f.Add([]byte(`{"name":"a","process":{"command":["true"]}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		serveFuzz(t, "/setTasks", body)
	})
}

// FuzzTaskName: a name is accepted exactly when it is a DNS-1123
// subdomain, and an accepted name never leads outside the data directory.
func FuzzTaskName(f *testing.F) {
	for _, n := range []string{"a", "task-1", "a.b.c", "a..b", "../x", "a/b", ".", "..", ".a", "a.", "-a", "A",
		"x\x00y", "é", strings.Repeat("a", 253), strings.Repeat("a", 254), strings.Repeat("a.", 100) + "a", "a\n"} {
		f.Add(n)
	}
	spec := &sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}}
	f.Fuzz(func(t *testing.T, name string) {
		err := validate(taskIn{Name: name, Spec: spec})
		problem := nameProblem(name)
		switch {
		case err == nil && problem != "":
			t.Fatalf("name %q accepted: %s", name, problem)
		case err != nil && problem == "":
			t.Fatalf("name %q refused: %v", name, err)
		case err == nil:
			root := "/data"
			if dir := filepath.Join(root, name); filepath.Dir(dir) != root {
				t.Fatalf("name %q leads to %s, outside %s", name, dir, root)
			}
		}
	})
}
