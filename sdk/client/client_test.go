package client

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// request is what the test server saw.
type request struct {
	method, path, rawPath, auth, contentType string
	query                                    url.Values
	body                                     string
}

// fakeHost answers every request with code and body, and records it.
type fakeHost struct {
	mu   sync.Mutex
	seen []request
	code int
	body string
}

func (f *fakeHost) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	f.mu.Lock()
	f.seen = append(f.seen, request{
		method: req.Method, path: req.URL.Path, rawPath: req.URL.EscapedPath(), auth: req.Header.Get("Authorization"),
		contentType: req.Header.Get("Content-Type"), query: req.URL.Query(), body: string(b),
	})
	f.mu.Unlock()
	w.WriteHeader(f.code)
	_, _ = io.WriteString(w, f.body)
}

func (f *fakeHost) last(t *testing.T) request {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.seen) == 0 {
		t.Fatal("the server saw no request")
	}
	return f.seen[len(f.seen)-1]
}

func newFake(t *testing.T, code int, body string, opts ...Option) (*fakeHost, *Client) {
	t.Helper()
	f := &fakeHost{code: code, body: body}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	c, err := New(srv.URL+"/prefix/", opts...)
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

func ptr[T any](v T) *T { return &v }

const taskJSON = `{"name":"t","resourceVersion":"7","spec":{"process":{"command":["true"]}},"status":{"state":{"running":{"startedAt":"2025-01-02T03:04:05Z"}}},` +
	`"process":{"command":["true"]},"processStatus":{"running":{"startedAt":"2025-01-02T03:04:05Z"}}}`

func TestClientRequests(t *testing.T) {
	ctx := context.Background()
	proc := &sdk.ProcessSpec{Command: []string{"true"}}
	cases := []struct {
		name   string
		code   int
		answer string
		call   func(*Client) error
		method string
		path   string
		query  url.Values
		body   string
	}{
		{name: "create nested", code: 201, answer: taskJSON,
			call: func(c *Client) error {
				_, err := c.Create(ctx, Task{Name: "t", Spec: sdk.TaskSpec{Process: proc}})
				return err
			},
			method: "POST", path: "/tasks", body: `{"name":"t","spec":{"process":{"command":["true"]}}}`},
		{name: "create flat", code: 201, answer: taskJSON,
			call:   func(c *Client) error { _, err := c.Create(ctx, Task{Name: "t", Process: proc}); return err },
			method: "POST", path: "/tasks", body: `{"name":"t","process":{"command":["true"]}}`},
		{name: "create a task as read sends one format and no resource version", code: 201, answer: taskJSON,
			call: func(c *Client) error {
				var read Task
				if err := json.Unmarshal([]byte(taskJSON), &read); err != nil {
					return err
				}
				_, err := c.Create(ctx, read)
				return err
			},
			method: "POST", path: "/tasks", body: `{"name":"t","spec":{"process":{"command":["true"]}}}`},
		{name: "get", code: 200, answer: taskJSON,
			call:   func(c *Client) error { _, err := c.Get(ctx, "t"); return err },
			method: "GET", path: "/tasks/t", query: url.Values{}},
		{name: "get escapes the name", code: 200, answer: taskJSON,
			call:   func(c *Client) error { _, err := c.Get(ctx, "a/b c"); return err },
			method: "GET", path: "/tasks/a%2Fb%20c", query: url.Values{}},
		{name: "get wait", code: 200, answer: taskJSON,
			call:   func(c *Client) error { _, err := c.GetWait(ctx, "t", 1500*time.Millisecond); return err },
			method: "GET", path: "/tasks/t", query: url.Values{"wait": {"1.5s"}}},
		{name: "list", code: 200, answer: "[" + taskJSON + "]",
			call:   func(c *Client) error { _, err := c.List(ctx); return err },
			method: "GET", path: "/getTasks", query: url.Values{}},
		{name: "delete", code: 204,
			call:   func(c *Client) error { return c.Delete(ctx, "t", nil) },
			method: "DELETE", path: "/tasks/t", query: url.Values{}},
		{name: "delete with a grace period, rounded up", code: 204,
			call:   func(c *Client) error { return c.Delete(ctx, "t", ptr(1500*time.Millisecond)) },
			method: "DELETE", path: "/tasks/t", query: url.Values{"gracePeriodSeconds": {"2"}}},
		{name: "delete with no grace period", code: 204,
			call:   func(c *Client) error { return c.Delete(ctx, "t", ptr(time.Duration(0))) },
			method: "DELETE", path: "/tasks/t", query: url.Values{"gracePeriodSeconds": {"0"}}},
		{name: "set tasks", code: 200, answer: "[" + taskJSON + "]",
			call: func(c *Client) error {
				_, err := c.SetTasks(ctx, []Task{{Name: "a", Process: proc}, {Name: "b", Spec: sdk.TaskSpec{Process: proc}}})
				return err
			},
			method: "POST", path: "/setTasks",
			body: `[{"name":"a","process":{"command":["true"]}},{"name":"b","spec":{"process":{"command":["true"]}}}]`},
		{name: "set no tasks sends an empty array", code: 200, answer: "[]",
			call:   func(c *Client) error { _, err := c.SetTasks(ctx, nil); return err },
			method: "POST", path: "/setTasks", body: `[]`},
		{name: "health", code: 200, answer: `{"status":"healthy"}`,
			call:   func(c *Client) error { return c.Health(ctx) },
			method: "GET", path: "/health", query: url.Values{}},
		{name: "logs, defaults", code: 200, answer: "hello\n",
			call:   func(c *Client) error { return readAll(c.Logs(ctx, "t", LogOptions{})) },
			method: "GET", path: "/tasks/t/logs", query: url.Values{}},
		{name: "logs, every option", code: 200, answer: "hello\n",
			call: func(c *Client) error {
				return readAll(c.Logs(ctx, "t", LogOptions{Stream: "stderr", Follow: true, TailLines: ptr(int64(0)), LimitBytes: ptr(int64(10))}))
			},
			method: "GET", path: "/tasks/t/logs",
			query: url.Values{"stream": {"stderr"}, "follow": {"true"}, "tailLines": {"0"}, "limitBytes": {"10"}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, cl := newFake(t, c.code, c.answer)
			if err := c.call(cl); err != nil {
				t.Fatal(err)
			}
			r := f.last(t)
			if r.method != c.method || r.rawPath != "/prefix"+c.path {
				t.Fatalf("sent %s %s, want %s /prefix%s", r.method, r.rawPath, c.method, c.path)
			}
			if c.query != nil && r.query.Encode() != c.query.Encode() {
				t.Fatalf("query %q, want %q", r.query.Encode(), c.query.Encode())
			}
			if r.body != c.body {
				t.Fatalf("body %s, want %s", r.body, c.body)
			}
			if (c.body != "") != (r.contentType == "application/json") {
				t.Fatalf("Content-Type %q with body %q", r.contentType, r.body)
			}
			if r.auth != "" {
				t.Fatalf("an Authorization header without a token: %q", r.auth)
			}
		})
	}
}

func readAll(rc io.ReadCloser, err error) error {
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.ReadAll(rc)
	return err
}

func TestClientDecodesBothFormats(t *testing.T) {
	_, c := newFake(t, 200, taskJSON)
	got, err := c.Get(context.Background(), "t")
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "7" || got.Spec.Process == nil || got.Process == nil || got.Status.State.Running == nil || got.ProcessStatus == nil ||
		!got.ProcessStatus.Running.StartedAt.Equal(&got.Status.State.Running.StartedAt) || got.Terminated() {
		t.Fatalf("decoded %+v", got)
	}
}

func TestClientToken(t *testing.T) {
	f, c := newFake(t, 200, `{"status":"healthy"}`, WithToken(" s3cret\n"))
	if err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.last(t).auth; got != "Bearer s3cret" {
		t.Fatalf("Authorization %q", got)
	}
}

func TestClientHTTPClient(t *testing.T) {
	used := false
	hc := &http.Client{Transport: roundTripper(func(req *http.Request) (*http.Response, error) {
		used = true
		return http.DefaultTransport.RoundTrip(req)
	})}
	_, c := newFake(t, 200, `{"status":"healthy"}`, WithHTTPClient(hc))
	if err := c.Health(context.Background()); err != nil || !used {
		t.Fatalf("err %v, custom client used: %v", err, used)
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

func TestClientErrors(t *testing.T) {
	cases := []struct {
		name               string
		code               int
		body               string
		wantMessage        string
		notFound, conflict bool
	}{
		{"not found", 404, `{"code":404,"message":"task \"t\" not found"}`, `task "t" not found`, true, false},
		{"conflict", 409, `{"code":409,"message":"task \"t\" exists with a different spec"}`, `task "t" exists with a different spec`, false, true},
		{"bad request", 400, `{"code":400,"message":"name is required"}`, "name is required", false, false},
		{"unauthorized", 401, `{"code":401,"message":"the bearer token is not valid"}`, "the bearer token is not valid", false, false},
		{"not the host's body", 502, "<html>bad gateway</html>", "<html>bad gateway</html>", false, false},
		{"empty body", 503, "", "Service Unavailable", false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, cl := newFake(t, c.code, c.body)
			calls := map[string]error{}
			_, calls["Get"] = cl.Get(context.Background(), "t")
			calls["Delete"] = cl.Delete(context.Background(), "t", nil)
			_, calls["Logs"] = cl.Logs(context.Background(), "t", LogOptions{})
			for op, err := range calls {
				var apiErr *APIError
				if !errors.As(err, &apiErr) || apiErr.StatusCode != c.code || apiErr.Message != c.wantMessage {
					t.Fatalf("%s: error %v, want an *APIError %d %q", op, err, c.code, c.wantMessage)
				}
				if IsNotFound(err) != c.notFound || IsConflict(err) != c.conflict {
					t.Fatalf("%s: IsNotFound %v, IsConflict %v for %v", op, IsNotFound(err), IsConflict(err), err)
				}
				if !strings.Contains(err.Error(), `task "t"`) {
					t.Fatalf("%s: %q does not say what was being done", op, err)
				}
			}
		})
	}
}

func TestClientTransportErrors(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c, err := New(base)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.List(context.Background())
	var apiErr *APIError
	if err == nil || errors.As(err, &apiErr) || !strings.Contains(err.Error(), "while listing the tasks") {
		t.Fatalf("got %v, want a wrapped transport error", err)
	}
	var urlErr *url.Error
	if !errors.As(err, &urlErr) {
		t.Fatalf("%v does not wrap the transport's error", err)
	}

	_, c2 := newFake(t, 200, `{"name": 3}`)
	if _, err := c2.Get(context.Background(), "t"); err == nil || !strings.Contains(err.Error(), "decoding") {
		t.Fatalf("a malformed answer gave %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, c3 := newFake(t, 200, taskJSON)
	if _, err := c3.Get(ctx, "t"); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled context gave %v", err)
	}
}

func TestNewRejectsBadBaseURLs(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:5758", "ftp://host", "http://", "http://h/?x=1", "http://h/#f", "http://[::1"} {
		if _, err := New(u); err == nil {
			t.Errorf("New(%q) succeeded", u)
		}
	}
}
