package runtimetest

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// Harness adapts one runtime flavour to the kit. Its methods may be called
// from parallel tests.
type Harness interface {
	// Launch starts a fresh instance of the runtime, for example a plugin
	// process (see LaunchPlugin). The kit calls Init on it itself, and
	// Close once the test is done with it.
	Launch(t *testing.T) Instance

	// Spec returns a spec that runs the POSIX sh script with the options
	// applied. The process flavour runs `sh -c script` (see ShellSpec); a
	// container flavour wraps the script in an image that has a shell.
	Spec(script string, opts SpecOptions) sdk.TaskSpec

	// StartErrorSpec returns a spec the runtime accepts (Validate passes)
	// but cannot start, such as a command that does not exist (see
	// MissingCommandSpec) or, for a container flavour, an image without
	// the entrypoint it names.
	StartErrorSpec() sdk.TaskSpec

	// Output returns what a task wrote to stdout and stderr, as plain
	// text; the order between the two streams does not matter. The process
	// flavour reads the task directory's log files (see ReadTaskFiles).
	Output(t *testing.T, task sdk.Task) string

	// Settings are handed to Init in sdk.Config.Settings. A short
	// sdk.SettingGracePeriod keeps the timeout tests fast; the kit reads it
	// to know how long a timeout may take.
	Settings() map[string]string
}

// StopSlacker may be implemented by a Harness whose runtime needs more
// than 1.5 s beyond the grace period for a Stop, such as a container
// runtime whose daemon answers slowly under load. Its grace period setting
// must exceed the slack by more than a second.
type StopSlacker interface {
	// StopSlack is how much longer than its grace period a Stop may take.
	StopSlack() time.Duration
}

// DataDirCleaner may be implemented by a Harness whose runtime keeps
// something outside the data directory it was given (a parent cgroup named
// for it, ...), to remove it once the kit is done with that directory: after
// every task has been stopped and removed.
type DataDirCleaner interface {
	// CleanDataDir removes what the runtime kept for dataDir; it fails t
	// if that cannot be done (something of a task was left).
	CleanDataDir(t *testing.T, dataDir string)
}

// Refuser may be implemented by a Harness whose runtime refuses specs the
// host's own checks let through (runtime options it does not know, values
// out of range, ...), each named for what is wrong with it. The kit checks
// that Validate refuses each with an error wrapping sdk.ErrInvalidSpec,
// which the host answers with a 400, and that the runtime lets the host
// ask: with sdk.Info.NoValidate set the host never calls Validate, and such
// a spec would be accepted, to fail later, as a StartError at best.
type Refuser interface {
	InvalidSpecs() map[string]sdk.TaskSpec
}

// DefaultDirer may be implemented by a Harness to say where a task that
// names no working directory runs, as a path the task sees (the process
// flavour: the task's directory). The kit checks it; when it is the task's
// directory, also that a file the task writes by a relative path lands
// there, beside its output.
type DefaultDirer interface {
	DefaultDir(task sdk.Task) string
}

// Instance is one running instance of a runtime.
type Instance interface {
	// Runtime is the instance's runtime, as the host would see it.
	Runtime() sdk.Runtime

	// Kill simulates a crash of the instance: for a plugin, SIGKILL to its
	// process (by PID), so it gets no chance to clean up. Tasks it started
	// must keep running. Kill returns once the instance is gone.
	Kill()

	// Close stops the instance in an orderly way. It must be safe to call
	// more than once and after Kill.
	Close()
}

// SpecOptions are the parts of a task spec the kit varies, beyond the
// script.
type SpecOptions struct {
	// Env is set in the task's environment, in order: a later entry for
	// the same name wins.
	Env []corev1.EnvVar
	// WorkingDir is the absolute directory the script starts in; empty
	// means the runtime's default.
	WorkingDir string
	// TimeoutSeconds, when positive, is the task's timeout.
	TimeoutSeconds int64
}
