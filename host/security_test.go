package host

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	cases := map[string]bool{
		"127.0.0.1:5758":       true,
		"127.1.2.3:0":          true,
		"[::1]:5758":           true,
		"localhost:5758":       true,
		"LocalHost:5758":       true,
		"0.0.0.0:5758":         false,
		":5758":                false,
		"[::]:5758":            false,
		"10.0.0.7:5758":        false,
		"example.com:5758":     false,
		"[::ffff:127.0.0.1]:1": true,
		"not an address":       false,
	}
	for addr, want := range cases {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// recordWarn keeps the Warn lines.
type recordWarn struct{ lines []string }

func (r *recordWarn) Warn(msg string, args ...any) { r.lines = append(r.lines, fmt.Sprint(msg, args)) }

func TestWarnIfExposed(t *testing.T) {
	mtls := &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: x509.NewCertPool()}
	cases := []struct {
		name string
		cfg  Config
		warn bool
	}{
		{"wildcard, no auth", Config{ListenAddr: "0.0.0.0:5758"}, true},
		{"any address, no auth", Config{ListenAddr: ":5758"}, true},
		{"TLS without client certificates", Config{ListenAddr: ":5758", TLS: &tls.Config{}}, true},
		{"token", Config{ListenAddr: "0.0.0.0:5758", AuthToken: "t"}, false},
		{"mutual TLS", Config{ListenAddr: "0.0.0.0:5758", TLS: mtls}, false},
		{"loopback", Config{ListenAddr: "127.0.0.1:5758"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r recordWarn
			warnIfExposed(c.cfg, &r)
			if (len(r.lines) == 1) != c.warn || len(r.lines) > 1 {
				t.Fatalf("warnings %q, want one: %v", r.lines, c.warn)
			}
			if c.warn && !strings.Contains(r.lines[0], "anyone who can reach the port can run commands") {
				t.Fatalf("warning %q does not say what is at stake", r.lines[0])
			}
		})
	}
}

func TestReadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := ReadToken(write("ok", "  s3cret\n")); err != nil || tok != "s3cret" {
		t.Fatalf("got %q, %v; want s3cret", tok, err)
	}
	if _, err := ReadToken(write("blank", " \n\t")); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("a blank token file: got %v, want an error saying it is empty", err)
	}
	if _, err := ReadToken(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing token file was accepted")
	}
}
