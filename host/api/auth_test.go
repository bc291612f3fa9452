package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

func TestRequireToken(t *testing.T) {
	cases := []struct {
		name         string
		method, path string
		auth         string
		want         int
	}{
		{"no header", "POST", "/tasks", "", 401},
		{"wrong token", "POST", "/tasks", "Bearer nope", 401},
		{"prefix of the token", "POST", "/tasks", "Bearer s3cr", 401},
		{"token plus more", "POST", "/tasks", "Bearer s3cret-and-more", 401},
		{"other scheme", "GET", "/getTasks", "Basic czNjcmV0", 401},
		{"scheme alone", "GET", "/getTasks", "Bearer", 401},
		{"empty token", "GET", "/getTasks", "Bearer   ", 401},
		{"unknown endpoint", "GET", "/nowhere", "", 401},
		{"health needs no token", "GET", "/health", "", 200},
		{"health by another method", "POST", "/health", "", 401},
		{"right token", "POST", "/tasks", "Bearer s3cret", 200},
		{"scheme in lower case", "DELETE", "/tasks/a", "bearer s3cret", 200},
		{"extra spaces", "GET", "/getTasks", "  Bearer   s3cret ", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reached := false
			next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				reached = true
				w.WriteHeader(200)
			})
			h := RequireToken("s3cret", next, hclog.NewNullLogger())
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(`{}`))
			if c.auth != "" {
				req.Header.Set("Authorization", c.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != c.want {
				t.Fatalf("got %d, want %d: %s", w.Code, c.want, w.Body)
			}
			if reached != (c.want == 200) {
				t.Fatalf("the request reached the API: %v, want %v", reached, c.want == 200)
			}
			if c.want != 401 {
				return
			}
			if got := w.Header().Get("WWW-Authenticate"); got != "Bearer" {
				t.Fatalf("WWW-Authenticate %q, want Bearer", got)
			}
			var e Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != 401 || e.Message == "" {
				t.Fatalf("body %q: want a JSON error with code 401 (%v)", w.Body, err)
			}
		})
	}
}
