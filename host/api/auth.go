package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// RequireToken lets through only requests that carry
// "Authorization: Bearer <token>", except GET /health, which probes must
// reach without a secret. Others get a 401 and change nothing.
func RequireToken(token string, next http.Handler, log hclog.Logger) http.Handler {
	// Comparing digests keeps the comparison constant-time even in the
	// token's length.
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if isProbe(req) {
			next.ServeHTTP(w, req)
			return
		}
		got, ok := bearer(req.Header.Get("Authorization"))
		if !ok {
			deny(w, "this endpoint needs an Authorization: Bearer <token> header")
			log.Debug("request without a bearer token refused", "method", req.Method, "path", req.URL.Path, "remote", req.RemoteAddr)
			return
		}
		sum := sha256.Sum256([]byte(got))
		if subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			deny(w, "the bearer token is not valid")
			log.Debug("request with a wrong bearer token refused", "method", req.Method, "path", req.URL.Path, "remote", req.RemoteAddr)
			return
		}
		next.ServeHTTP(w, req)
	})
}

// RequireClientCert lets through only requests on a connection whose
// client presented a certificate the TLS layer verified against the client
// CA (mutual TLS), except GET /health and /readyz: a kubelet's probes
// present no certificate. Others get a 403 and change nothing. The TLS
// layer asks for a certificate without requiring one, and refuses any it
// cannot verify, so this is where one's absence is refused.
func RequireClientCert(next http.Handler, log hclog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if isProbe(req) || (req.TLS != nil && len(req.TLS.VerifiedChains) > 0) {
			next.ServeHTTP(w, req)
			return
		}
		writeError(w, http.StatusForbidden, "this endpoint needs a client certificate signed by the executor's client CA (--tls-client-ca-file)")
		log.Debug("request without a client certificate refused", "method", req.Method, "path", req.URL.Path, "remote", req.RemoteAddr)
	})
}

// isProbe reports whether req is a health or readiness probe, which must
// get through without credentials.
func isProbe(req *http.Request) bool {
	return req.Method == http.MethodGet && (req.URL.Path == "/health" || req.URL.Path == "/readyz")
}

// bearer extracts the token of a Bearer Authorization header (the scheme
// is case-insensitive, as in RFC 7235).
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

func deny(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", "Bearer")
	writeError(w, http.StatusUnauthorized, msg)
}
