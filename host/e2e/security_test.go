package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/opensandbox/task-executor/host/api"
)

// call sends a request with an optional bearer token through client.
func call(t *testing.T, client *http.Client, method, url, token string, body any) (int, []byte, http.Header, error) {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, resp.Header, err
}

// errorMessage decodes an API error body, failing unless it is one with
// the given code.
func errorMessage(t *testing.T, body []byte, code int) string {
	t.Helper()
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code != code || e.Message == "" {
		t.Fatalf("body %s is not a JSON error with code %d (%v)", body, code, err)
	}
	return e.Message
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecurityBearerToken(t *testing.T) {
	tokenFile := writeFile(t, t.TempDir(), "token", []byte("  s3cret-token\n"))
	h := startHost(t, "--auth-token-file", tokenFile)
	c := http.DefaultClient

	if code, body, _, err := call(t, c, "POST", h.url+"/tasks", "s3cret-token", processTask("kept", "sleep", "60")); err != nil || code != 201 {
		t.Fatalf("create with the right token: %d %s %v, want 201", code, body, err)
	}
	// Let the task settle (its shim's record is the last file it makes)
	// so that nothing changes on disk by itself.
	h.shimState("kept")
	before := tasksOnDisk(t, h.dataDir)

	cases := []struct {
		name, method, path, token string
		body                      any
		want                      int
	}{
		{"create without a token", "POST", "/tasks", "", processTask("intruder", "true"), 401},
		{"create with a wrong token", "POST", "/tasks", "guess", processTask("intruder", "true"), 401},
		{"setTasks without a token", "POST", "/setTasks", "", []any{}, 401},
		{"delete with a wrong token", "DELETE", "/tasks/kept", "s3cret-token-", nil, 401},
		{"get without a token", "GET", "/tasks/kept", "", nil, 401},
		{"list with a wrong token", "GET", "/getTasks", "S3CRET-TOKEN", nil, 401},
		{"health without a token", "GET", "/health", "", nil, 200},
		{"list with the right token", "GET", "/getTasks", "s3cret-token", nil, 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, body, hdr, err := call(t, c, tc.method, h.url+tc.path, tc.token, tc.body)
			if err != nil || code != tc.want {
				t.Fatalf("got %d %s %v, want %d", code, body, err, tc.want)
			}
			if tc.want == 401 {
				errorMessage(t, body, 401)
				if got := hdr.Get("WWW-Authenticate"); got != "Bearer" {
					t.Fatalf("WWW-Authenticate %q, want Bearer", got)
				}
			}
			if after := tasksOnDisk(t, h.dataDir); after != before {
				t.Fatalf("the data directory changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// tasksOnDisk fingerprints the tasks' part of a data directory, leaving
// out the directories the store prepares ahead in the background.
func tasksOnDisk(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	for p, sum := range snapshot(t, dir) {
		if !strings.HasPrefix(p, ".spare-") {
			out = append(out, p+" "+sum)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// testCA is a certificate authority made up for a test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var serial int64

func newCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a certificate and its key, in PEM, for 127.0.0.1 (server)
// or for a client.
func (ca testCA) issue(t *testing.T, name string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb})
}

// tlsClient trusts roots and presents the given client certificate, if
// any.
func tlsClient(t *testing.T, roots []byte, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(roots)
	cfg := &tls.Config{RootCAs: pool}
	if certPEM != nil {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	// A fresh transport per client: no connection is reused across them.
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

// serverFiles writes a server certificate and key for 127.0.0.1 issued
// by ca and returns the --tls-* flags for them.
func serverFiles(t *testing.T, ca testCA) []string {
	dir := t.TempDir()
	cert, key := ca.issue(t, "task-executor", true)
	return []string{"--tls-cert-file", writeFile(t, dir, "cert.pem", cert), "--tls-key-file", writeFile(t, dir, "key.pem", key)}
}

func TestSecurityTLS(t *testing.T) {
	ca := newCA(t, "server CA")
	h := startHost(t, serverFiles(t, ca)...)
	httpsURL := strings.Replace(h.url, "http://", "https://", 1)

	// Plain HTTP gets no further than the TLS layer.
	code, body, _, err := call(t, http.DefaultClient, "POST", h.url+"/tasks", "", processTask("plain", "true"))
	if err == nil && code != http.StatusBadRequest {
		t.Fatalf("plain HTTP to the TLS port: %d %s, want a refusal", code, body)
	}
	if _, err := os.Stat(filepath.Join(h.dataDir, "plain")); !os.IsNotExist(err) {
		t.Fatalf("a plain-HTTP request created a task: %v", err)
	}

	// A client that does not trust the server's CA refuses it.
	other := newCA(t, "someone else")
	if _, _, _, err := call(t, tlsClient(t, other.pem, nil, nil), "GET", httpsURL+"/health", "", nil); err == nil {
		t.Fatal("a client trusting another CA accepted the server's certificate")
	}

	c := tlsClient(t, ca.pem, nil, nil)
	if code, body, _, err := call(t, c, "POST", httpsURL+"/tasks", "", processTask("over-tls", "true")); err != nil || code != 201 {
		t.Fatalf("create over HTTPS: %d %s %v, want 201", code, body, err)
	}
	if code, body, _, err := call(t, c, "GET", httpsURL+"/tasks/over-tls?wait=10s", "", nil); err != nil || code != 200 || !strings.Contains(string(body), `"exitCode":0`) {
		t.Fatalf("get over HTTPS: %d %s %v, want the task terminated with exit 0", code, body, err)
	}
	// TLS 1.2 is the oldest the server speaks.
	old := tlsClient(t, ca.pem, nil, nil)
	old.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS11
	old.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS10
	if _, _, _, err := call(t, old, "GET", httpsURL+"/health", "", nil); err == nil {
		t.Fatal("a TLS 1.1 client was accepted")
	}
	// TLS 1.2 with AEAD ciphers only: a client offering CBC alone is
	// refused, one offering GCM served.
	for _, tc := range []struct {
		suite uint16
		ok    bool
	}{
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, false},
		{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, true},
	} {
		c := tlsClient(t, ca.pem, nil, nil)
		cfg := c.Transport.(*http.Transport).TLSClientConfig
		cfg.MaxVersion, cfg.CipherSuites = tls.VersionTLS12, []uint16{tc.suite}
		code, _, _, err := call(t, c, "GET", httpsURL+"/health", "", nil)
		if got := err == nil && code == 200; got != tc.ok {
			t.Errorf("TLS 1.2 with %s alone: served %v (%d, %v), want %v", tls.CipherSuiteName(tc.suite), got, code, err, tc.ok)
		}
	}
}

func TestSecurityMutualTLS(t *testing.T) {
	serverCA, clientCA, otherCA := newCA(t, "server CA"), newCA(t, "client CA"), newCA(t, "not the client CA")
	flags := append(serverFiles(t, serverCA), "--tls-client-ca-file", writeFile(t, t.TempDir(), "clients.pem", clientCA.pem))
	h := startHost(t, flags...)
	url := strings.Replace(h.url, "http://", "https://", 1)

	goodCert, goodKey := clientCA.issue(t, "controller", false)
	badCert, badKey := otherCA.issue(t, "stranger", false)
	// want: the answer to a create (0: the connection refused) and to
	// each probe.
	cases := []struct {
		name      string
		cert, key []byte
		// anyway sends the certificate even though the server did not ask
		// for one from its CA (Go's client sends none then).
		anyway bool
		create int
		probes int
	}{
		// A kubelet's probes carry no certificate.
		{"no client certificate", nil, nil, false, http.StatusForbidden, 200},
		{"certificate from another CA", badCert, badKey, false, http.StatusForbidden, 200},
		{"certificate from another CA, sent anyway", badCert, badKey, true, 0, 0},
		{"certificate from the client CA", goodCert, goodKey, false, http.StatusCreated, 200},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tlsClient(t, serverCA.pem, tc.cert, tc.key)
			if tc.anyway {
				cfg := c.Transport.(*http.Transport).TLSClientConfig
				cert := cfg.Certificates[0]
				cfg.Certificates = nil
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			}
			name := fmt.Sprintf("mtls-%d", i)
			code, body, _, err := call(t, c, "POST", url+"/tasks", "", processTask(name, "true"))
			switch {
			case tc.create == 0 && err == nil:
				t.Fatalf("create: %d %s, want the connection refused", code, body)
			case tc.create != 0 && (err != nil || code != tc.create):
				t.Fatalf("create: %d %s %v, want %d", code, body, err, tc.create)
			}
			if _, serr := os.Stat(filepath.Join(h.dataDir, name)); (tc.create == http.StatusCreated) != (serr == nil) {
				t.Fatalf("create answered %d; the task's directory: %v", code, serr)
			}
			for _, probe := range []string{"/health", "/readyz", "/getTasks"} {
				want := tc.probes
				if probe == "/getTasks" && want == 200 && tc.create != http.StatusCreated {
					want = http.StatusForbidden
				}
				code, body, _, err := call(t, c, "GET", url+probe, "", nil)
				if (want == 0) != (err != nil) || (want != 0 && code != want) {
					t.Errorf("GET %s: %d %s %v, want %d (0: refused)", probe, code, body, err, want)
				}
			}
		})
	}
}

// exposureWarning is what the host says when it listens openly.
const exposureWarning = "anyone who can reach the port can run commands"

func TestSecurityExposureWarning(t *testing.T) {
	tokenFile := writeFile(t, t.TempDir(), "token", []byte("t0ken"))
	ca := newCA(t, "client CA")
	cases := []struct {
		name  string
		flags []string
		warn  bool
	}{
		{"all interfaces without auth", []string{"--listen-addr", "0.0.0.0:0"}, true},
		{"all interfaces with a token", []string{"--listen-addr", "0.0.0.0:0", "--auth-token-file", tokenFile}, false},
		{"all interfaces with mutual TLS", append(serverFiles(t, ca), "--listen-addr", "0.0.0.0:0",
			"--tls-client-ca-file", writeFile(t, t.TempDir(), "ca.pem", ca.pem)), false},
		{"loopback without auth", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := startHost(t, tc.flags...)
			// The warning comes before "serving", which startHost waited for.
			var warnings []map[string]any
			for _, line := range strings.Split(h.logs.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && strings.Contains(fmt.Sprint(m["@message"]), exposureWarning) {
					warnings = append(warnings, m)
				}
			}
			if !tc.warn {
				if len(warnings) != 0 {
					t.Fatalf("unexpected warning: %v", warnings)
				}
				return
			}
			if len(warnings) != 1 || warnings[0]["@level"] != "warn" {
				t.Fatalf("want one warn line saying %q, got %v", exposureWarning, warnings)
			}
			if msg := fmt.Sprint(warnings[0]["@message"]); !strings.Contains(msg, "--auth-token-file") {
				t.Fatalf("the warning %q does not say how to fix it", msg)
			}
		})
	}
}

// TestSecurityRefusedPlugins: plugins that could have been tampered with
// are not launched, the log says which and why, and tasks for their
// runtimes are told why; the other plugins work.
func TestSecurityRefusedPlugins(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Plugin files that serve a built-in runtime (see builtinPluginFile).
	process, nsenter := builtinPluginFile("process"), builtinPluginFile("nsenter")
	plugins := []struct {
		file    string
		content []byte
		mode    os.FileMode
		listed  []byte // content whose checksum the file lists
		refusal string // "" for a plugin that runs
	}{
		{"process", process, 0o755, process, ""},
		{"loose", process, 0o775, process, "group- or world-writable"},
		{"altered", nsenter, 0o755, append(nsenter, 0), "differs from the plugin checksum file"},
		{"stowaway", process, 0o755, nil, "not listed in the plugin checksum file"},
	}
	var sums strings.Builder
	for _, p := range plugins {
		path := filepath.Join(dir, p.file)
		if err := os.WriteFile(path, p.content, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, p.mode); err != nil { // past the umask
			t.Fatal(err)
		}
		if p.listed != nil {
			fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(p.listed), p.file)
		}
	}
	sumFile := writeFile(t, t.TempDir(), "SHA256SUMS", []byte(sums.String()))

	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir, args: []string{"--plugin-checksums", sumFile}}
	h.start()
	t.Cleanup(h.cleanup)

	for _, p := range plugins {
		t.Run(p.file, func(t *testing.T) {
			task := map[string]any{"name": "on-" + p.file, "spec": map[string]any{
				"runtime": p.file, "process": map[string]any{"command": []string{"true"}}}}
			if p.refusal == "" {
				h.mustDo(201, "POST", "/tasks", task)
				if term := h.waitTerminated("on-"+p.file, 15*time.Second).Status.State.Terminated; term.ExitCode != 0 {
					t.Fatalf("the task on the accepted plugin: %+v, want exit 0", term)
				}
				return
			}
			var logged bool
			for _, line := range strings.Split(h.logs.String(), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil && m["@level"] == "error" &&
					m["path"] == filepath.Join(dir, p.file) && strings.Contains(fmt.Sprint(m["reason"]), p.refusal) {
					logged = true
				}
			}
			if !logged {
				t.Fatalf("no error line in the host's log names %s and says %q", p.file, p.refusal)
			}
			msg := errorMessage(t, h.mustDo(400, "POST", "/tasks", task), 400)
			if !strings.Contains(msg, "refused") || !strings.Contains(msg, p.refusal) {
				t.Fatalf("message %q: want it to say the plugin was refused because %q", msg, p.refusal)
			}
			if _, err := os.Stat(filepath.Join(h.dataDir, "on-"+p.file)); !os.IsNotExist(err) {
				t.Fatalf("the refused task left a directory: %v", err)
			}
		})
	}
	// Never launched: the host runs one plugin, the accepted one (which
	// replaced the built-in process runtime).
	var running []string
	for _, c := range children(h.cmd.Process.Pid) {
		if name := pluginName(c); name != "" {
			running = append(running, fmt.Sprintf("%s (pid %d)", name, c))
		}
	}
	if len(running) != 1 {
		t.Errorf("the host runs the plugins %v; want the accepted process plugin alone", running)
	}
}

// TestSecurityWritablePluginDir: a plugin directory others can write to is
// refused as a writable plugin file is (they could replace the file): its
// plugins are not launched, the log says why, and a task for the runtime
// gets a 400 saying so; the built-in runtime it names is not run instead.
func TestSecurityWritablePluginDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "plugins")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "process"), builtinPluginFile("process"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil { // past the umask
		t.Fatal(err)
	}
	h := &hostProc{t: t, dataDir: dataDir(t), pluginDir: dir}
	h.start()
	t.Cleanup(h.cleanup)
	const why = "is group- or world-writable"
	if !strings.Contains(h.logs.String(), "its directory "+dir+" "+why) {
		t.Fatalf("the log does not say the plugin directory is writable:\n%s", h.logs.String())
	}
	msg := errorMessage(t, h.mustDo(400, "POST", "/tasks", processTask("on-refused", "true")), 400)
	if !strings.Contains(msg, "refused") || !strings.Contains(msg, why) {
		t.Fatalf("message %q: want it to say the plugin was refused because its directory %s", msg, why)
	}
	if n := len(children(h.cmd.Process.Pid)); n != 0 {
		t.Fatalf("the host runs %d children, want no plugin at all", n)
	}
}

func TestSecurityMaxTasks(t *testing.T) {
	h := startHost(t, "--max-tasks", "3")
	for _, n := range []string{"a", "b", "c"} {
		h.mustDo(201, "POST", "/tasks", processTask(n, "sleep", "60"))
	}
	// Let the tasks settle, so that the list changes only if a request
	// changes it.
	for _, n := range []string{"a", "b", "c"} {
		eventually(t, 10*time.Second, func() bool {
			tk, _ := h.get(n)
			return tk.Status.State.Running != nil
		}, func() string { return "task " + n + " never ran" })
	}
	listBefore := h.mustDo(200, "GET", "/getTasks", nil)
	four := []any{processTask("a", "sleep", "60"), processTask("w", "true"), processTask("x", "true"), processTask("y", "true")}
	cases := []struct {
		name, path string
		body       any
		says       string
	}{
		{"a fourth task", "/tasks", processTask("d", "true"), "--max-tasks"},
		{"setTasks of four", "/setTasks", four, "--max-tasks"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := errorMessage(t, h.mustDo(429, "POST", tc.path, tc.body), 429)
			if !strings.Contains(msg, tc.says) || !strings.Contains(msg, "3") {
				t.Fatalf("message %q: want it to name the limit (3, %s)", msg, tc.says)
			}
			for _, n := range []string{"d", "w", "x", "y"} {
				if _, err := os.Stat(filepath.Join(h.dataDir, n)); !os.IsNotExist(err) {
					t.Fatalf("task %s was stored: %v", n, err)
				}
			}
			if after := h.mustDo(200, "GET", "/getTasks", nil); string(after) != string(listBefore) {
				t.Fatalf("the tasks changed:\nbefore %s\nafter  %s", listBefore, after)
			}
		})
	}
	// A set within the limit replaces the old one.
	h.mustDo(200, "POST", "/setTasks", four[1:])
}

func TestSecurityBadStartupFiles(t *testing.T) {
	dir := t.TempDir()
	empty := writeFile(t, dir, "empty-token", []byte(" \n"))
	garbage := writeFile(t, dir, "garbage.pem", []byte("not a certificate"))
	badSums := writeFile(t, dir, "SHA256SUMS", []byte("1234  process\n"))
	cases := []struct {
		name string
		args []string
		env  []string
		says string
	}{
		{"empty token file", []string{"--auth-token-file", empty}, nil, "empty"},
		{"missing token file", []string{"--auth-token-file", filepath.Join(dir, "nope")}, nil, "auth token file"},
		{"token file from env", nil, []string{"AUTH_TOKEN_FILE=" + empty}, "empty"},
		{"certificate without key", []string{"--tls-cert-file", garbage}, nil, "--tls-key-file"},
		{"key without certificate from env", nil, []string{"TLS_KEY_FILE=" + garbage}, "--tls-cert-file"},
		{"client CA alone", []string{"--tls-client-ca-file", garbage}, nil, "--tls-client-ca-file needs"},
		{"bad certificate", []string{"--tls-cert-file", garbage, "--tls-key-file", garbage}, nil, "TLS certificate"},
		{"malformed checksum file", []string{"--plugin-checksums", badSums}, nil, "64 hex digits"},
		{"checksum file from env, missing", nil, []string{"PLUGIN_CHECKSUMS=" + filepath.Join(dir, "nope")}, "plugin checksum file"},
		{"zero max-tasks", []string{"--max-tasks", "0"}, nil, "max-tasks"},
		{"bad MAX_TASKS", nil, []string{"MAX_TASKS=many"}, "MAX_TASKS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "task-executor"), append(tc.args, "--data-dir", filepath.Join(t.TempDir(), "data"))...)
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			if err == nil || cmd.ProcessState.ExitCode() != 2 {
				t.Fatalf("exit %v: want 2: %s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.says) {
				t.Fatalf("output %q: want one line that mentions %q", out, tc.says)
			}
		})
	}
}
