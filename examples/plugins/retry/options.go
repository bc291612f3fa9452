package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// The retry policy of a task is set in its own env, so that it travels
// with the spec through the HTTP API unchanged; the task sees the variables
// too, which does no harm and lets a script know its budget.
const (
	// EnvMaxAttempts is how many times the command may run in all.
	EnvMaxAttempts = "RETRY_MAX_ATTEMPTS"
	// EnvBackoff is the wait before the second attempt, a Go duration; it
	// doubles for every further attempt, up to maxBackoff.
	EnvBackoff = "RETRY_BACKOFF"
	// EnvOnExitCodes, a comma-separated list of exit codes, restricts
	// retries to those codes (EX_TEMPFAIL, 75, say); by default every
	// failure is retried.
	EnvOnExitCodes = "RETRY_ON_EXIT_CODES"
	// EnvAttempt is set by the runtime in every attempt's environment: 1
	// for the first run, 2 for the first retry, and so on.
	EnvAttempt = "RETRY_ATTEMPT"
)

// Defaults and bounds of the policy.
const (
	defaultMaxAttempts = 3
	defaultBackoff     = time.Second
	maxAttemptsLimit   = 100
	maxBackoff         = time.Minute
)

// options is a task's retry policy.
type options struct {
	MaxAttempts int           `json:"maxAttempts"`
	Backoff     time.Duration `json:"backoff"`
	// OnExitCodes, when not empty, are the only exit codes retried.
	OnExitCodes []int32 `json:"onExitCodes,omitempty"`
}

// parseOptions reads the retry policy from a process spec's env; a later
// entry of the same name wins, as it does for the task's environment.
func parseOptions(p *sdk.ProcessSpec) (options, error) {
	o := options{MaxAttempts: defaultMaxAttempts, Backoff: defaultBackoff}
	for _, e := range p.Env {
		switch e.Name {
		case EnvMaxAttempts:
			n, err := strconv.Atoi(e.Value)
			if err != nil || n < 1 || n > maxAttemptsLimit {
				return o, fmt.Errorf("env %s=%q: want a whole number from 1 to %d: %w", e.Name, e.Value, maxAttemptsLimit, sdk.ErrInvalidSpec)
			}
			o.MaxAttempts = n
		case EnvBackoff:
			d, err := time.ParseDuration(e.Value)
			if err != nil || d < 0 || d > maxBackoff {
				return o, fmt.Errorf("env %s=%q: want a duration such as 500ms or 10s, at most %s: %w", e.Name, e.Value, maxBackoff, sdk.ErrInvalidSpec)
			}
			o.Backoff = d
		case EnvOnExitCodes:
			o.OnExitCodes = nil
			for f := range strings.SplitSeq(e.Value, ",") {
				c, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || c < 1 || c > 255 {
					return o, fmt.Errorf("env %s=%q: want exit codes from 1 to 255, comma-separated: %w", e.Name, e.Value, sdk.ErrInvalidSpec)
				}
				o.OnExitCodes = append(o.OnExitCodes, int32(c))
			}
		}
	}
	return o, nil
}

// retries reports whether a failed attempt that ended with exitCode is
// worth another.
func (o options) retries(exitCode int32) bool {
	return exitCode != 0 && (len(o.OnExitCodes) == 0 || slices.Contains(o.OnExitCodes, exitCode))
}

// backoff is the wait after the given (1-based) failed attempt.
func (o options) backoff(failed int) time.Duration {
	d := o.Backoff
	for i := 1; i < failed && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, maxBackoff)
}
