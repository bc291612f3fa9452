package e2e

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
)

// snapshot fingerprints a data directory: every path with its content.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		// The create log's content changes by itself as the store syncs
		// the records it holds; an entry a request wrote would come with
		// the task's directory.
		if d.Type()&fs.ModeNamedPipe != 0 || d.IsDir() || rel == ".create.log" {
			out[rel] = "-"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBadInputChangesNothing(t *testing.T) {
	h := startHost(t)
	h.mustDo(201, "POST", "/tasks", processTask("existing", "sleep", "60"))
	// Wait until the task runs and its shim has recorded the run, so
	// nothing changes on its own while the bad requests come in.
	h.shimState("existing")
	eventually(t, 10*time.Second, func() bool {
		tk, _ := h.get("existing")
		return tk.Status.State.Running != nil
	}, func() string { return "the task never settled into running" })

	task := func(name string, spec any) string {
		b, _ := json.Marshal(map[string]any{"name": name, "spec": spec})
		return string(b)
	}
	proc := func(p map[string]any) map[string]any { return map[string]any{"process": p} }
	huge := `{"name":"huge","spec":{"process":{"command":["true"],"args":["` + strings.Repeat("a", 1<<20) + `"]}}}`
	cases := []struct {
		name, method, path, body string
		code                     int
		says                     string
	}{
		{"malformed JSON", "POST", "/tasks", `{"name":`, 400, "JSON"},
		{"trailing data", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}})) + ` {}`, 400, "after the JSON"},
		{"empty body", "POST", "/tasks", ``, 400, "empty"},
		{"array to /tasks", "POST", "/tasks", `[]`, 400, "expected"},
		{"no name", "POST", "/tasks", task("", proc(map[string]any{"command": []string{"true"}})), 400, "name is required"},
		{"upper-case name", "POST", "/tasks", task("Bad", proc(map[string]any{"command": []string{"true"}})), 400, "DNS-1123"},
		{"path traversal", "POST", "/tasks", task("../etc", proc(map[string]any{"command": []string{"true"}})), 400, "DNS-1123"},
		{"slash in name", "POST", "/tasks", task("a/b", proc(map[string]any{"command": []string{"true"}})), 400, "DNS-1123"},
		{"name too long", "POST", "/tasks", task(strings.Repeat("a", 254), proc(map[string]any{"command": []string{"true"}})), 400, "DNS-1123"},
		{"no spec", "POST", "/tasks", `{"name":"x"}`, 400, "spec is required"},
		{"empty command", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{}})), 400, "command is required"},
		{"empty command word", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{""}})), 400, "command is required"},
		{"missing command", "POST", "/tasks", task("x", proc(map[string]any{"args": []string{"a"}})), 400, "command is required"},
		{"neither kind", "POST", "/tasks", task("x", map[string]any{}), 400, "exactly one"},
		{"both kinds", "POST", "/tasks", task("x", map[string]any{"process": map[string]any{"command": []string{"true"}}, "container": map[string]any{"image": "busybox"}}), 400, "exactly one"},
		{"unknown field", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "cmd": "true"})), 400, "unknown field"},
		{"wrong type", "POST", "/tasks", task("x", proc(map[string]any{"command": "true"})), 400, "command"},
		{"relative workingDir", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "workingDir": "tmp"})), 400, "absolute"},
		{"negative timeout", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "timeoutSeconds": -1})), 400, "timeoutSeconds"},
		{"bad env name", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "env": []map[string]string{{"name": "1A", "value": "v"}}})), 400, "env"},
		{"env valueFrom and value", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "env": []map[string]any{{"name": "A", "value": "v", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}}}}})), 400, "valueFrom"},
		{"env valueFrom without source", "POST", "/tasks", task("x", proc(map[string]any{"command": []string{"true"}, "env": []map[string]any{{"name": "A", "valueFrom": map[string]any{}}}})), 400, "exactly one source"},
		{"duplicate create", "POST", "/tasks", task("existing", proc(map[string]any{"command": []string{"sleep", "60"}})), 409, "already exists"},
		{"too large", "POST", "/tasks", huge, 413, "larger than"},
		{"container mode off", "POST", "/tasks", task("x", map[string]any{"container": map[string]any{"image": "busybox"}}), 400, "--enable-container-mode"},
		{"unknown runtime", "POST", "/tasks", task("x", map[string]any{"runtime": "nope", "process": map[string]any{"command": []string{"true"}}}), 400, "process"},
		{"setTasks object", "POST", "/setTasks", `{"name":"x"}`, 400, "JSON array"},
		{"setTasks malformed", "POST", "/setTasks", `[{"name":`, 400, "JSON"},
		{"setTasks duplicate names", "POST", "/setTasks", "[" + task("dup", proc(map[string]any{"command": []string{"true"}})) + "," + task("dup", proc(map[string]any{"command": []string{"true"}})) + "]", 400, "more than once"},
		{"setTasks bad member", "POST", "/setTasks", "[" + task("Bad", proc(map[string]any{"command": []string{"true"}})) + "]", 400, "DNS-1123"},
		{"setTasks too large", "POST", "/setTasks", "[" + huge + "]", 413, "larger than"},
		{"delete unknown", "DELETE", "/tasks/nope", ``, 404, "not found"},
		{"delete bad grace", "DELETE", "/tasks/existing?gracePeriodSeconds=soon", ``, 400, "gracePeriodSeconds"},
		{"delete negative grace", "DELETE", "/tasks/existing?gracePeriodSeconds=-1", ``, 400, "gracePeriodSeconds"},
		{"get unknown", "GET", "/tasks/nope", ``, 404, "not found"},
		{"unknown route", "GET", "/nope", ``, 404, "no such endpoint"},
		{"wrong method", "PUT", "/tasks/existing", ``, 405, "not allowed"},
	}
	// The store tops up its prepared directories in the background after
	// the good request took one: wait until nothing moves.
	var before map[string]string
	eventually(t, 10*time.Second, func() bool {
		a := snapshot(t, h.dataDir)
		time.Sleep(100 * time.Millisecond)
		before = snapshot(t, h.dataDir)
		return fmt.Sprint(a) == fmt.Sprint(before)
	}, func() string { return "the data directory never settled" })
	listBefore := h.mustDo(200, "GET", "/getTasks", nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := h.do(c.method, c.path, c.body)
			if code != c.code {
				t.Fatalf("got %d %s, want %d", code, body, c.code)
			}
			var e api.Error
			if err := json.Unmarshal(body, &e); err != nil || e.Code != c.code || e.Message == "" {
				t.Fatalf("error body %s is not {code, message} (%v)", body, err)
			}
			if !strings.Contains(e.Message, c.says) {
				t.Fatalf("message %q does not say %q", e.Message, c.says)
			}
			if after := snapshot(t, h.dataDir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("the data directory changed:\nbefore %v\nafter  %v", before, after)
			}
			if listAfter := h.mustDo(200, "GET", "/getTasks", nil); string(listAfter) != string(listBefore) {
				t.Fatalf("the task list changed:\nbefore %s\nafter  %s", listBefore, listAfter)
			}
		})
	}
}
