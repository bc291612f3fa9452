package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestStderrNobodyReads: a host whose stderr nobody reads any more (a full
// pipe: a log collector that is stuck or gone) goes on serving. The host
// logs at debug level here, every task's create, start, exit and delete,
// into a pipe of one page that stops being read once the host serves: a
// log write that waited for the reader would freeze the host within a few
// tasks (it did: log lines are written under the task table's lock, and
// the plugins' lines go through the host's log). The lines it could not
// write are dropped, counted in /metrics, and told in the log once the
// reader is back.
func TestStderrNobodyReads(t *testing.T) {
	release := make(chan struct{})
	h := &hostProc{t: t, dataDir: dataDir(t), holdLogs: release}
	h.start()
	t.Cleanup(h.cleanup)
	released := false
	releaseLogs := func() {
		if !released {
			released = true
			close(release)
		}
	}
	// Before the cleanup stops the host, so that its last lines go out.
	t.Cleanup(releaseLogs)

	// In rounds, until the host has had to drop lines (its queue for
	// stderr is 1 MiB), and one round more: serving goes on once the
	// pipe and the queue are full.
	const round, maxTasks = 100, 5000
	tasks, after := 0, -1
	for after < round {
		if tasks >= maxTasks {
			t.Fatalf("no log line dropped after %d tasks: did stderr fill at all? The test proves nothing", tasks)
		}
		failed := make(chan error, 1)
		go func() { failed <- churn(h.url, tasks, round) }()
		select {
		case err := <-failed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("%d tasks did not go through create, exit and delete in 3 minutes with stderr unread: the host is stuck", round)
		}
		tasks += round
		if after >= 0 {
			after += round
		} else if h.scrape()["task_executor_log_lines_dropped_total"] > 0 {
			after = 0
		}
	}
	dropped := h.scrape()["task_executor_log_lines_dropped_total"]
	t.Logf("%d tasks served with stderr unread; %.0f log lines dropped", tasks, dropped)

	releaseLogs()
	eventually(t, 30*time.Second, func() bool {
		return strings.Contains(h.logs.String(), "log lines were dropped")
	}, func() string { return "the host never told the loss of log lines once stderr was read again" })
	// What it says is the count /metrics had then, or more (the scrape
	// itself logs).
	for _, l := range strings.Split(h.logs.String(), "\n") {
		var m struct {
			Message string  `json:"@message"`
			Dropped float64 `json:"dropped"`
		}
		if json.Unmarshal([]byte(l), &m) == nil && strings.HasPrefix(m.Message, "log lines were dropped") && m.Dropped < dropped {
			t.Fatalf("the log tells %v lines dropped, /metrics counted %v before: %s", m.Dropped, dropped, l)
		}
	}
}

// churn creates n tasks one by one (numbered from first), waits for each
// to terminate and deletes it, with every request bounded in time: a host
// that stops answering is an error, not a hung test.
func churn(url string, first, n int) error {
	c := newAPIClient(url)
	defer c.close()
	do := func(method, path string, body any) (int, []byte, error) {
		code, out, err := c.call(method, path, body)
		if err != nil {
			err = fmt.Errorf("%s %s: %w", method, path, err)
		}
		return code, out, err
	}
	for i := first; i < first+n; i++ {
		name := fmt.Sprintf("quiet-%d", i)
		if code, body, err := do("POST", "/tasks", shTask(name, "echo out; echo err >&2")); err != nil || code != 201 {
			return fmt.Errorf("create %s: %d %s %v", name, code, body, err)
		}
		code, body, err := do("GET", "/tasks/"+name+"?wait=20s", nil)
		if err != nil || code != 200 || !bytes.Contains(body, []byte(`"terminated":`)) {
			return fmt.Errorf("task %s did not terminate: %d %s %v", name, code, body, err)
		}
		if code, body, err := do("DELETE", "/tasks/"+name, nil); err != nil || code >= 300 {
			return fmt.Errorf("delete %s: %d %s %v", name, code, body, err)
		}
	}
	return nil
}
