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
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, CipherSuites: aeadSuites}
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
	// Asked for, verified if given, and required by api.RequireClientCert
	// everywhere but the probes, which a kubelet sends without one.
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	return cfg, nil
}

// aeadSuites are the TLS 1.2 cipher suites served: ECDHE with an AEAD
// cipher only (no CBC, no RSA key exchange). TLS 1.3's suites are all
// AEAD and not configurable.
var aeadSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// mutualTLS reports whether cfg requires client certificates (of every
// request but the probes).
func mutualTLS(cfg *tls.Config) bool { return cfg != nil && cfg.ClientCAs != nil }

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
	if cfg.AuthToken != "" || mutualTLS(cfg.TLS) || isLoopback(cfg.ListenAddr) {
		return
	}
	log.Warn("the API listens on a non-loopback address without authentication: anyone who can reach the port can run commands; "+
		"set --auth-token-file (and --tls-cert-file/--tls-key-file), or --tls-client-ca-file for mutual TLS, or listen on 127.0.0.1",
		"addr", cfg.ListenAddr)
}
