package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/host/tasks"
	"github.com/opensandbox/task-executor/sdk"
)

// recorder keeps the tasks it is given and answers with them, as waiting.
type recorder struct {
	listOnly
	created []tasks.NewTask
}

func asTask(n tasks.NewTask) tasks.Task {
	return tasks.Task{Name: n.Name, Spec: n.Spec, State: sdk.Waiting(sdk.ReasonInitialized, "")}
}

func (r *recorder) Create(_ context.Context, t tasks.NewTask) (tasks.Task, error) {
	r.created = append(r.created, t)
	return asTask(t), nil
}

func (r *recorder) Sync(_ context.Context, desired []tasks.NewTask) ([]tasks.Task, error) {
	r.created = append(r.created, desired...)
	out := make([]tasks.Task, len(desired))
	for i, d := range desired {
		out[i] = asTask(d)
	}
	return out, nil
}

func TestCompatFormatInput(t *testing.T) {
	timeout := int64(5)
	want := sdk.TaskSpec{Process: &sdk.ProcessSpec{
		Command: []string{"sh", "-c"}, Args: []string{"echo hi"}, WorkingDir: "/tmp", TimeoutSeconds: &timeout,
	}}
	const proc = `{"command":["sh","-c"],"args":["echo hi"],"workingDir":"/tmp","timeoutSeconds":5}`
	cases := []struct {
		name    string
		body    string
		code    int
		message string
	}{
		{"flat", `{"name":"t","process":` + proc + `}`, 201, ""},
		{"nested", `{"name":"t","spec":{"process":` + proc + `}}`, 201, ""},
		{"flat, sent back with its status", `{"name":"t","process":` + proc + `,"processStatus":{"waiting":{}}}`, 201, ""},
		{"both forms, as read back", `{"name":"t","spec":{"process":` + proc + `},"process":` + proc + `,` +
			`"status":{"state":{"waiting":{}}},"processStatus":{"waiting":{}}}`, 201, ""},
		{"both forms, different", `{"name":"t","spec":{"process":{"command":["true"]}},"process":` + proc + `}`, 400, "not both"},
		{"both forms, container spec", `{"name":"t","spec":{"container":{"name":"c","image":"busybox"}},"process":` + proc + `}`, 400, "not both"},
		{"neither", `{"name":"t"}`, 400, "spec is required"},
		{"flat, unknown field", `{"name":"t","process":{"command":["true"],"cmd":"x"}}`, 400, "unknown field"},
		{"flat, unknown top-level field", `{"name":"t","process":{"command":["true"]},"extra":1}`, 400, "unknown field"},
		{"flat, invalid", `{"name":"t","process":{"command":[]}}`, 400, "command is required"},
	}
	for _, c := range cases {
		for _, ep := range []string{"/tasks", "/setTasks"} {
			t.Run(c.name+" "+ep, func(t *testing.T) {
				rec := &recorder{}
				body := c.body
				code := c.code
				if ep == "/setTasks" {
					body = "[" + body + "]"
					if code == 201 {
						code = 200
					}
				}
				w := httptest.NewRecorder()
				Handler(rec, hclog.NewNullLogger()).ServeHTTP(w, httptest.NewRequest(http.MethodPost, ep, strings.NewReader(body)))
				if w.Code != code {
					t.Fatalf("got %d, want %d: %s", w.Code, code, w.Body)
				}
				if code >= 400 {
					var e Error
					if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != code || !strings.Contains(e.Message, c.message) {
						t.Fatalf("error body %s, want code %d and a message with %q", w.Body, code, c.message)
					}
					if len(rec.created) != 0 {
						t.Fatalf("a rejected request reached the controller: %+v", rec.created)
					}
					return
				}
				if len(rec.created) != 1 || !reflect.DeepEqual(rec.created[0].Spec, want) {
					t.Fatalf("the controller got %+v, want spec %+v", rec.created, want)
				}
			})
		}
	}
}

func TestCompatFormatOutput(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	proc := sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"sleep", "9"}}}
	ctr := sdk.TaskSpec{Container: &corev1.Container{Name: "c", Image: "busybox"}}
	cases := []struct {
		name     string
		task     tasks.Task
		wantFlat bool
	}{
		{"waiting", tasks.Task{Name: "w", Spec: proc, State: sdk.Waiting(sdk.ReasonInitialized, "")}, true},
		{"running", tasks.Task{Name: "r", Spec: proc, State: sdk.Running(now)}, true},
		{"timed out", tasks.Task{Name: "x", Spec: proc, State: sdk.Terminated(137, 9, sdk.ReasonTaskTimeout, "", now, now)}, true},
		{"not a process task", tasks.Task{Name: "c", Spec: ctr, State: sdk.Running(now)}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := Handler(getOne{t: c.task}, hclog.NewNullLogger())
			for _, path := range []string{"/tasks/" + c.task.Name, "/getTasks"} {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
				body := strings.TrimSpace(w.Body.String())
				if path == "/getTasks" {
					body = strings.TrimSuffix(strings.TrimPrefix(body, "["), "]")
				}
				var got map[string]json.RawMessage
				if w.Code != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil {
					t.Fatalf("GET %s: %d %s", path, w.Code, w.Body)
				}
				var status struct {
					State json.RawMessage `json:"state"`
				}
				if err := json.Unmarshal(got["status"], &status); err != nil || got["spec"] == nil {
					t.Fatalf("GET %s: no nested form: %s", path, body)
				}
				if !c.wantFlat {
					if got["process"] != nil || got["processStatus"] != nil {
						t.Fatalf("GET %s: a task that is not a process carries the flat form: %s", path, body)
					}
					continue
				}
				var spec struct {
					Process json.RawMessage `json:"process"`
				}
				if err := json.Unmarshal(got["spec"], &spec); err != nil {
					t.Fatal(err)
				}
				if string(got["process"]) != string(spec.Process) || string(got["processStatus"]) != string(status.State) {
					t.Fatalf("GET %s: the flat form does not mirror the nested one: %s", path, body)
				}
			}
		})
	}
}

// getOne serves a single task.
type getOne struct {
	listOnly
	t tasks.Task
}

func (g getOne) Create(context.Context, tasks.NewTask) (tasks.Task, error) {
	return tasks.Task{}, nil
}
func (g getOne) Delete(context.Context, string, *time.Duration) error { return nil }
func (g getOne) Sync(context.Context, []tasks.NewTask) ([]tasks.Task, error) {
	return nil, nil
}
func (g getOne) Get(name string) (tasks.Task, bool) { return g.t, name == g.t.Name }
func (g getOne) Await(name string) (tasks.Task, <-chan struct{}, bool) {
	return g.t, nil, name == g.t.Name
}
func (g getOne) List() []tasks.Task               { return []tasks.Task{g.t} }
func (g getOne) Snapshot() ([]tasks.Task, uint64) { return g.List(), 0 }
