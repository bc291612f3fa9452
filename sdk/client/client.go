// Package client is a Go client for task-executor's HTTP API.
//
//	c, err := client.New("http://127.0.0.1:5758", client.WithToken(token))
//	if err != nil { ... }
//	t, err := c.Create(ctx, client.Task{Name: "hello", Spec: sdk.TaskSpec{
//		Process: &sdk.ProcessSpec{Command: []string{"echo", "hello"}},
//	}})
//	t, err = c.GetWait(ctx, "hello", time.Minute)
//
// Watch delivers every change of the tasks as a stream of events,
// resuming and re-listing by itself as Kubernetes' informers do.
//
// Every method takes a context, which bounds the whole request. An answer
// other than 2xx is an *APIError (test it with IsNotFound, IsConflict or
// errors.As); other errors are the transport's, wrapped.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Client talks to one task-executor host. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	http  *http.Client
	token string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends the requests through hc instead of
// http.DefaultClient. A Timeout on hc also bounds GetWait's long poll,
// Logs' follow and each of Watch's streams, so leave it unset for those
// and bound them with the context.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.http = hc
		}
	}
}

// WithToken sends "Authorization: Bearer <token>" with every request, as
// a host started with --auth-token-file requires.
func WithToken(token string) Option {
	return func(c *Client) { c.token = strings.TrimSpace(token) }
}

// New returns a client of the host at baseURL, such as
// "http://127.0.0.1:5758". A path in baseURL is kept as a prefix of every
// endpoint's, for a host behind a proxy.
func New(baseURL string, opts ...Option) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("while parsing the base URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("base URL %q must be http:// or https:// and name a host", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("base URL %q must have no query or fragment", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""
	c := &Client{base: u, http: http.DefaultClient}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// APIError is an answer of the host other than 2xx.
type APIError struct {
	// StatusCode is the answer's HTTP status code.
	StatusCode int
	// Message is the host's explanation, from the JSON error body (or the
	// start of the body, when it is not one).
	Message string
}

// Error says what the host answered.
func (e *APIError) Error() string {
	return fmt.Sprintf("task-executor answered %d %s: %s", e.StatusCode, http.StatusText(e.StatusCode), e.Message)
}

// IsNotFound reports whether err is the host's 404: no such task.
func IsNotFound(err error) bool { return hasStatus(err, http.StatusNotFound) }

// IsConflict reports whether err is the host's 409: the name is taken, or
// a task of that name has a different spec.
func IsConflict(err error) bool { return hasStatus(err, http.StatusConflict) }

func hasStatus(err error, code int) bool {
	var e *APIError
	return errors.As(err, &e) && e.StatusCode == code
}

// Create creates a task; the host answers with it, waiting to start.
func (c *Client) Create(ctx context.Context, t Task) (Task, error) {
	var out Task
	if err := c.doJSON(ctx, http.MethodPost, "/tasks", nil, toWire(t), &out); err != nil {
		return Task{}, fmt.Errorf("while creating task %q: %w", t.Name, err)
	}
	return out, nil
}

// Get returns a task.
func (c *Client) Get(ctx context.Context, name string) (Task, error) {
	return c.get(ctx, name, 0)
}

// GetWait returns a task once it has terminated, or as it is when wait is
// over, whichever comes first: a long poll, so a caller need not poll. The
// host accepts waits up to five minutes.
func (c *Client) GetWait(ctx context.Context, name string, wait time.Duration) (Task, error) {
	return c.get(ctx, name, wait)
}

func (c *Client) get(ctx context.Context, name string, wait time.Duration) (Task, error) {
	var q url.Values
	if wait > 0 {
		q = url.Values{"wait": {wait.String()}}
	}
	var out Task
	if err := c.doJSON(ctx, http.MethodGet, "/tasks/"+url.PathEscape(name), q, nil, &out); err != nil {
		return Task{}, fmt.Errorf("while getting task %q: %w", name, err)
	}
	return out, nil
}

// List returns every task, sorted by name.
func (c *Client) List(ctx context.Context) ([]Task, error) {
	out, _, err := c.ListWithVersion(ctx)
	return out, err
}

// ListWithVersion returns every task, sorted by name, and the resource
// version the list is as of: every change up to it is in the list, and a
// watch from it (WatchOptions.ResourceVersion, with the tasks as
// WatchOptions.Known) delivers every later one. The version is empty from
// a host that predates watches.
func (c *Client) ListWithVersion(ctx context.Context) ([]Task, string, error) {
	var out []Task
	h, err := c.doJSONHeader(ctx, http.MethodGet, "/getTasks", nil, nil, &out)
	if err != nil {
		return nil, "", fmt.Errorf("while listing the tasks: %w", err)
	}
	return out, h.Get("X-Resource-Version"), nil
}

// Delete stops a task (SIGTERM, then SIGKILL after the grace period) and
// removes it; it returns once the host has accepted the deletion, and the
// task is visible, with a DeletionTimestamp, until it is gone. A nil grace
// means the host's default; a grace is rounded up to whole seconds.
func (c *Client) Delete(ctx context.Context, name string, grace *time.Duration) error {
	var q url.Values
	if grace != nil {
		q = url.Values{"gracePeriodSeconds": {strconv.FormatInt(int64(math.Ceil(grace.Seconds())), 10)}}
	}
	if err := c.doJSON(ctx, http.MethodDelete, "/tasks/"+url.PathEscape(name), q, nil, nil); err != nil {
		return fmt.Errorf("while deleting task %q: %w", name, err)
	}
	return nil
}

// SetTasks makes tasks the whole set of the host's tasks: names missing
// from it are deleted, new names created, unchanged ones left alone; a
// changed spec for an existing name is a conflict and changes nothing. It
// returns every task.
func (c *Client) SetTasks(ctx context.Context, tasks []Task) ([]Task, error) {
	in := make([]taskIn, len(tasks))
	for i, t := range tasks {
		in[i] = toWire(t)
	}
	var out []Task
	if err := c.doJSON(ctx, http.MethodPost, "/setTasks", nil, in, &out); err != nil {
		return nil, fmt.Errorf("while setting the tasks: %w", err)
	}
	return out, nil
}

// Health returns nil when the host is up.
func (c *Client) Health(ctx context.Context) error {
	if err := c.doJSON(ctx, http.MethodGet, "/health", nil, nil, nil); err != nil {
		return fmt.Errorf("while checking the host's health: %w", err)
	}
	return nil
}

// Logs returns a task's output as plain lines; the caller closes it. With
// opts.Follow it streams until the task has terminated and its output is
// drained, or until ctx is done.
func (c *Client) Logs(ctx context.Context, name string, opts LogOptions) (io.ReadCloser, error) {
	q := url.Values{}
	if opts.Stream != "" {
		q.Set("stream", opts.Stream)
	}
	if opts.Follow {
		q.Set("follow", "true")
	}
	if opts.TailLines != nil {
		q.Set("tailLines", strconv.FormatInt(*opts.TailLines, 10))
	}
	if opts.LimitBytes != nil {
		q.Set("limitBytes", strconv.FormatInt(*opts.LimitBytes, 10))
	}
	resp, err := c.do(ctx, http.MethodGet, "/tasks/"+url.PathEscape(name)+"/logs", q, nil)
	if err != nil {
		return nil, fmt.Errorf("while reading the logs of task %q: %w", name, err)
	}
	return resp.Body, nil
}

// doJSON sends in (when not nil) as JSON and decodes a 2xx answer into out
// (when not nil).
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	_, err := c.doJSONHeader(ctx, method, path, q, in, out)
	return err
}

// doJSONHeader is doJSON, returning the answer's header too.
func (c *Client) doJSONHeader(ctx context.Context, method, path string, q url.Values, in, out any) (http.Header, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, fmt.Errorf("while encoding the request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.do(ctx, method, path, q, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Header, nil
	}
	// Unknown fields are accepted: a newer host may add some.
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("while decoding the answer of %s %s: %w", method, path, err)
	}
	return resp.Header, nil
}

// do sends a request and returns a 2xx answer, whose body the caller
// closes; any other answer is an *APIError.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader) (*http.Response, error) {
	// path is escaped (a task's name is a path segment); Path holds the
	// unescaped form and RawPath keeps the escaping.
	unescaped, err := url.PathUnescape(path)
	if err != nil {
		return nil, fmt.Errorf("while building the request's path %q: %w", path, err)
	}
	u := *c.base
	u.Path, u.RawPath = c.base.Path+unescaped, c.base.EscapedPath()+path
	if len(q) > 0 {
		u.RawQuery = q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, fmt.Errorf("while building the request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("while sending %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

func decodeError(resp *http.Response) error {
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if err != nil {
		return fmt.Errorf("while reading the host's %d answer: %w", resp.StatusCode, err)
	}
	var e apiErrorBody
	if json.Unmarshal(b, &e) == nil && e.Message != "" {
		return &APIError{StatusCode: resp.StatusCode, Message: e.Message}
	}
	// Not the host's own error body: a proxy in between, say.
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &APIError{StatusCode: resp.StatusCode, Message: msg}
}
