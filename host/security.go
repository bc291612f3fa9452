package host

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// ReadToken reads the API's bearer token from a file, without the
// whitespace around it (editors and `echo` add a newline).
func ReadToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("while reading the auth token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("the auth token file %s is empty", path)
	}
	return tok, nil
}

// LoadTLS builds the API's TLS configuration from a certificate and its
// key and, for mutual TLS, the CA bundle client certificates must be
// signed by (empty: no client certificate asked for).
func LoadTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("while loading the TLS certificate and key: %w", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("while reading the TLS client CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("the TLS client CA file " + clientCAFile + " holds no PEM certificate")
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	return cfg, nil
}

// isLoopback reports whether a listen address (host:port) accepts only
// connections from this machine. An empty host or a wildcard address
// listens everywhere; a host name other than localhost is taken to be
// reachable from outside.
func isLoopback(addr string) bool {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// warnIfExposed says so at start when anyone who can reach the port can
// run commands.
func warnIfExposed(cfg Config, log interface{ Warn(string, ...any) }) {
	mtls := cfg.TLS != nil && cfg.TLS.ClientAuth == tls.RequireAndVerifyClientCert
	if cfg.AuthToken != "" || mtls || isLoopback(cfg.ListenAddr) {
		return
	}
	log.Warn("the API listens on a non-loopback address without authentication: anyone who can reach the port can run commands; "+
		"set --auth-token-file (and --tls-cert-file/--tls-key-file), or --tls-client-ca-file for mutual TLS, or listen on 127.0.0.1",
		"addr", cfg.ListenAddr)
}
