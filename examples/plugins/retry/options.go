package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opensandbox/task-executor/sdk"
)

// The retry policy of a task is set in its runtime options
// (spec.runtimeOptions): the host passes them to Validate and Start and
// stores them with the task, and they never reach the task's environment.
const (
	// OptMaxAttempts is how many times the command may run in all.
	OptMaxAttempts = "maxAttempts"
	// OptBackoff is the wait before the second attempt, a Go duration; it
	// doubles for every further attempt, up to maxBackoff.
	OptBackoff = "backoff"
	// OptOnExitCodes, a comma-separated list of exit codes, restricts
	// retries to those codes (EX_TEMPFAIL, 75, say); by default every
	// failure is retried.
	OptOnExitCodes = "onExitCodes"
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

// parseOptions reads the retry policy from a spec's runtime options; an
// option it does not know is refused, so that a typo is a 400 rather than
// a policy silently not applied.
func parseOptions(spec sdk.TaskSpec) (options, error) {
	o := options{MaxAttempts: defaultMaxAttempts, Backoff: defaultBackoff}
	for k, v := range spec.RuntimeOptions {
		switch k {
		case OptMaxAttempts:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxAttemptsLimit {
				return o, fmt.Errorf("runtime option %s=%q: want a whole number from 1 to %d: %w", k, v, maxAttemptsLimit, sdk.ErrInvalidSpec)
			}
			o.MaxAttempts = n
		case OptBackoff:
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > maxBackoff {
				return o, fmt.Errorf("runtime option %s=%q: want a duration such as 500ms or 10s, at most %s: %w", k, v, maxBackoff, sdk.ErrInvalidSpec)
			}
			o.Backoff = d
		case OptOnExitCodes:
			for f := range strings.SplitSeq(v, ",") {
				c, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || c < 1 || c > 255 {
					return o, fmt.Errorf("runtime option %s=%q: want exit codes from 1 to 255, comma-separated: %w", k, v, sdk.ErrInvalidSpec)
				}
				o.OnExitCodes = append(o.OnExitCodes, int32(c))
			}
			slices.Sort(o.OnExitCodes)
		default:
			return o, fmt.Errorf("runtime option %q: the %s runtime knows %s, %s and %s: %w", k, name, OptMaxAttempts, OptBackoff, OptOnExitCodes, sdk.ErrInvalidSpec)
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
