package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConnectionFlood: 5,000 idle keep-alive connections, 500 requests
// whose headers never end and 500 whose bodies stall, all at once. The
// host's descriptors and memory stay within the stated bounds, /health
// answers a fresh connection quickly throughout, and every attacking
// connection is shed within the timeouts (README "Limits").
func TestConnectionFlood(t *testing.T) {
	h := startHost(t)
	addr := strings.TrimPrefix(h.url, "http://")
	pid := h.cmd.Process.Pid
	baseFDs := fdCount(pid)

	stop := make(chan struct{})
	var probes []time.Duration
	var probeErrs []string
	var probeMu sync.Mutex
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
			began := time.Now()
			resp, err := c.Get(h.url + "/health")
			took := time.Since(began)
			probeMu.Lock()
			if err != nil {
				probeErrs = append(probeErrs, err.Error())
			} else {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					probeErrs = append(probeErrs, resp.Status)
				}
				probes = append(probes, took)
			}
			probeMu.Unlock()
		}
	}()

	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		conns = append(conns, c)
		return c
	}
	// Idle keep-alive connections, each after one answered request.
	for i := 0; i < 5000; i++ {
		c := dial()
		fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			// Refused or closed at the cap is an answer too.
			continue
		}
		resp.Body.Close()
	}
	// Headers that never end: a line of 1 KiB every 20 ms.
	var attackers []net.Conn
	for i := 0; i < 500; i++ {
		c := dial()
		attackers = append(attackers, c)
		go func() {
			fmt.Fprintf(c, "POST /tasks HTTP/1.1\r\nHost: x\r\n")
			line := "X-Filler: " + strings.Repeat("a", 1024) + "\r\n"
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				if _, err := io.WriteString(c, line); err != nil {
					return
				}
			}
		}()
	}
	// Bodies that stall after 100 KB of a promised 1 MB.
	for i := 0; i < 500; i++ {
		c := dial()
		attackers = append(attackers, c)
		fmt.Fprintf(c, "POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"name\":\"x\",\"spec\":{\"process\":{\"command\":[\"%s", strings.Repeat("a", 100000))
	}
	time.Sleep(2 * time.Second)
	fds, mem := fdCount(pid), rss(pid)
	t.Logf("under attack: %d descriptors (%d before), RSS %d MiB", fds, baseFDs, mem>>10)
	if fds > baseFDs+2048+64 {
		t.Errorf("the host holds %d descriptors, over --max-connections (2048) + 64 above its %d at rest", fds, baseFDs)
	}
	if mem > 256<<10 {
		t.Errorf("the host's RSS is %d MiB under attack, over 256 MiB", mem>>10)
	}

	// Every attacker is shed within the timeouts: headers at once (431)
	// or within 10 s, stalled bodies within 30 s.
	deadline := time.Now().Add(40 * time.Second)
	for _, c := range attackers {
		_ = c.SetReadDeadline(deadline)
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("an attacking connection was not closed by the host within the timeouts: %v", err)
		}
	}
	close(stop)
	<-probeDone
	probeMu.Lock()
	defer probeMu.Unlock()
	if len(probeErrs) > 0 {
		t.Errorf("%d of %d probes of /health failed: %v", len(probeErrs), len(probes)+len(probeErrs), probeErrs[:min(5, len(probeErrs))])
	}
	sort.Slice(probes, func(i, j int) bool { return probes[i] < probes[j] })
	if len(probes) < 20 {
		t.Fatalf("only %d probes answered", len(probes))
	}
	p99 := probes[len(probes)*99/100]
	t.Logf("/health under attack: %d probes, p50 %s, p99 %s, max %s", len(probes), probes[len(probes)/2], p99, probes[len(probes)-1])
	if p99 > 100*time.Millisecond {
		t.Errorf("/health p99 %s under attack, want at most 100ms", p99)
	}
}

func fdCount(pid int) int {
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(ents)
}
