// Package contract is the one source of the values the shim's Go side
// (package shim) and its C side (csrc/shim.c) must agree on: the job's
// format and option names, the messages before a job, the records' file
// names and JSON keys, the exit reasons, the stop signal. Package shim uses
// these constants; the C side includes csrc/contract.h, which Header
// renders from them (go generate in sdk/shim writes it; a test of package
// shim fails when the checked-in header is not what Header renders, so the
// two sides cannot drift apart unnoticed). The header is checked in because
// `make build` compiles the shim with a C compiler alone.
//
// The package builds only where package shim does (see siginfo_linux64.go).
package contract

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// The executable and the job.
const (
	// ShimName is the shim's name: its argv[0], and the name the kernel
	// shows for it (set by the shim itself, since a shim run from
	// /proc/self/fd/N would otherwise be called "N").
	ShimName = "task-executor-shim"
	// JobFD is the descriptor of the shim's end of its socket to the
	// launcher.
	JobFD = 3
	// JobFormat is the first field of every job: the layout of the rest.
	// It goes up with any change of the layout (fields, their order, what
	// they mean), so that a shim and a launcher of different versions
	// refuse each other instead of misreading each other.
	JobFormat = "tej/2"
	// MaxJob is the most bytes a job's fields may take (the length prefix
	// excluded).
	MaxJob = 64 << 20
	// MsgJob and MsgJoin are the one byte of a message to an idle shim:
	// MsgJob comes with the job's descriptors, and the job follows;
	// MsgJoin comes with descriptors of cgroup files to join, and is
	// answered with one byte, 0 or the errno of the first failure.
	MsgJob  = 'J'
	MsgJoin = 'C'
	// MaxJoin is the most descriptors one message may carry: the cgroup
	// files of a MsgJoin (one per hierarchy).
	MaxJoin = 32
	// FieldTrue and FieldFalse are a job's boolean fields and options.
	FieldTrue  = "1"
	FieldFalse = "0"
	// CheckJobArg, as the shim's only argument, has it read a job from its
	// standard input (without descriptors: it is told how many came as
	// the argument after), print one verdict line and exit, starting
	// nothing: the job parser's test and fuzz entry point.
	CheckJobArg = "--check-job"
)

// The options of a job, "key=value" each (see jobOptions in package shim,
// parse_option in csrc/shim.c). The shim refuses a job with an option it
// does not know: options carry a task's identity and confinement, which must
// never be dropped silently.
const (
	OptNSFlags  = "nsflags"
	OptGone     = "gone"
	OptOOM      = "oom"
	OptWrap     = "wrap"
	OptUID      = "uid"
	OptGID      = "gid"
	OptGroups   = "groups"
	OptCaps     = "caps"
	OptNNP      = "nnp"
	OptUmask    = "umask"
	OptAppArmor = "apparmor"
	OptSELinux  = "selinux"
	OptSeccomp  = "seccomp"
)

// Refusals: the "refused" report of a shim that cannot read its job.
const (
	RefusedMalformed   = "a malformed job"
	RefusedOtherFormat = "a job of another format (this shim reads " + JobFormat + "): the plugin's SDK and the shim come from different versions"
)

// The files a shim keeps in its state directory.
const (
	StateFile = "shim-state.json"
	ExitFile  = "shim-exit.json"
	LogFile   = "shim.log"
	// RotatedSuffix names the older part of a capped output file (the
	// sdk package's RotatedSuffix, which the host reads back).
	RotatedSuffix = ".1"
)

// The JSON keys of the records and reports (package shim's State, Exit and
// report, whose struct tags a test holds to these).
const (
	KeyState   = "state"
	KeyExit    = "exit"
	KeyRefused = "refused"

	KeyShimPID     = "shimPid"
	KeyShimStart   = "shimStart"
	KeyPID         = "pid"
	KeyPIDStart    = "pidStart"
	KeyStartedAt   = "startedAt"
	KeyHolderPID   = "holderPid"
	KeyHolderStart = "holderStart"
	KeyGoneReason  = "goneReason"

	KeyExitCode   = "exitCode"
	KeySignal     = "signal"
	KeyReason     = "reason"
	KeyMessage    = "message"
	KeyFinishedAt = "finishedAt"
)

// ReportKeys, StateKeys and ExitKeys are the keys of a report, a state
// record and an exit record, in the order the shim writes them.
var (
	ReportKeys = []string{KeyState, KeyExit, KeyRefused}
	StateKeys  = []string{KeyShimPID, KeyShimStart, KeyPID, KeyPIDStart, KeyStartedAt, KeyHolderPID, KeyHolderStart, KeyGoneReason}
	ExitKeys   = []string{KeyExitCode, KeySignal, KeyReason, KeyMessage, KeyStartedAt, KeyFinishedAt}
)

// The reasons an exit record written by the shim carries (the sdk
// package's, which a test of package shim holds them to).
const (
	ReasonSucceeded   = "Succeeded"
	ReasonFailed      = "Failed"
	ReasonTaskTimeout = "TaskTimeout"
	ReasonStartError  = "StartError"
	ReasonOOMKilled   = "OOMKilled"
)

// GoneMessage is the message of a task ended with its container, a format
// with the PID of the container's process (for C's snprintf and Go's
// Sprintf alike): the shim writes it, and package shim when the shim died
// with the container before it could.
const GoneMessage = "the container the task ran in has ended (its process %d exited), and the task with it"

// SignalExitBase plus N is the exit code of a task killed by signal N, as
// shells report it.
const SignalExitBase = 128

// RecordDelay is how long after the start a shim records the task's state:
// a task that ends sooner never costs the file (creating files is the
// dearest part of a start on some machines). Until then package shim sees a
// live shim without a record, and waits.
const RecordDelay = 10 * time.Millisecond

// StopSignal carries a stop request: a real-time signal queued (sigqueue,
// SI_QUEUE) with the grace period in nanoseconds as its value. A signal,
// not a control file, because a file more per task would cost more than the
// rest of recording it.
const StopSignal = 40

// def is one definition of the header: a C macro and its value.
type def struct {
	name  string
	value any
}

// defs are the header's definitions, in its order.
var defs = []def{
	{"SHIM_NAME", ShimName},
	{"JOB_FD", JobFD},
	{"JOB_FORMAT", JobFormat},
	{"MAX_JOB", MaxJob},
	{"MSG_JOB", char(MsgJob)},
	{"MSG_JOIN", char(MsgJoin)},
	{"MAX_JOIN", MaxJoin},
	{"FIELD_TRUE", FieldTrue},
	{"FIELD_FALSE", FieldFalse},
	{"CHECK_JOB_ARG", CheckJobArg},

	{"OPT_NSFLAGS", OptNSFlags},
	{"OPT_GONE", OptGone},
	{"OPT_OOM", OptOOM},
	{"OPT_WRAP", OptWrap},
	{"OPT_UID", OptUID},
	{"OPT_GID", OptGID},
	{"OPT_GROUPS", OptGroups},
	{"OPT_CAPS", OptCaps},
	{"OPT_NNP", OptNNP},
	{"OPT_UMASK", OptUmask},
	{"OPT_APPARMOR", OptAppArmor},
	{"OPT_SELINUX", OptSELinux},
	{"OPT_SECCOMP", OptSeccomp},

	{"REFUSED_MALFORMED", RefusedMalformed},
	{"REFUSED_OTHER_FORMAT", RefusedOtherFormat},

	{"STATE_FILE", StateFile},
	{"EXIT_FILE", ExitFile},
	{"LOG_FILE", LogFile},
	{"ROTATED_SUFFIX", RotatedSuffix},

	{"KEY_STATE", KeyState},
	{"KEY_EXIT", KeyExit},
	{"KEY_REFUSED", KeyRefused},
	{"KEY_SHIM_PID", KeyShimPID},
	{"KEY_SHIM_START", KeyShimStart},
	{"KEY_PID", KeyPID},
	{"KEY_PID_START", KeyPIDStart},
	{"KEY_STARTED_AT", KeyStartedAt},
	{"KEY_HOLDER_PID", KeyHolderPID},
	{"KEY_HOLDER_START", KeyHolderStart},
	{"KEY_GONE_REASON", KeyGoneReason},
	{"KEY_EXIT_CODE", KeyExitCode},
	{"KEY_SIGNAL", KeySignal},
	{"KEY_REASON", KeyReason},
	{"KEY_MESSAGE", KeyMessage},
	{"KEY_FINISHED_AT", KeyFinishedAt},

	{"REASON_SUCCEEDED", ReasonSucceeded},
	{"REASON_FAILED", ReasonFailed},
	{"REASON_TASK_TIMEOUT", ReasonTaskTimeout},
	{"REASON_START_ERROR", ReasonStartError},
	{"REASON_OOM_KILLED", ReasonOOMKilled},
	{"GONE_MESSAGE", GoneMessage},

	{"SIGNAL_EXIT_BASE", SignalExitBase},
	{"RECORD_DELAY_NS", RecordDelay},
	{"STOP_SIGNAL", StopSignal},
}

// char marks a value the header spells as a C character constant.
type char byte

// Header renders csrc/contract.h: every definition as a C macro, plus the
// siginfo_t layout the stop request is packed in, which the C side checks
// against its C library's with static assertions.
func Header() []byte {
	var b bytes.Buffer
	b.WriteString(`/* Code generated by go generate in sdk/shim (internal/gencontract); DO NOT EDIT.
 * The values the shim shares with package shim, from package
 * sdk/shim/internal/contract: change them there. */
#ifndef TASK_EXECUTOR_SHIM_CONTRACT_H
#define TASK_EXECUTOR_SHIM_CONTRACT_H

`)
	for _, d := range slices.Concat(defs, siginfoDefs) {
		fmt.Fprintf(&b, "#define %s %s\n", d.name, cValue(d.value))
	}
	b.WriteString("\n#endif\n")
	return b.Bytes()
}

// cValue spells v as a C constant.
func cValue(v any) string {
	switch v := v.(type) {
	case string:
		return cString(v)
	case char:
		return cChar(byte(v))
	case int:
		if v < 0 {
			return "(" + strconv.Itoa(v) + ")"
		}
		return strconv.Itoa(v)
	case time.Duration:
		return strconv.FormatInt(int64(v), 10) + "LL"
	}
	panic(fmt.Sprintf("contract: no C spelling for %T", v))
}

// cString quotes s as a C string literal; bytes outside printable ASCII are
// octal escapes (three digits, so that a digit after one is not read into
// it).
func cString(s string) string {
	var b bytes.Buffer
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		b.WriteString(escape(s[i]))
	}
	b.WriteByte('"')
	return b.String()
}

func cChar(c byte) string {
	if c == '\'' {
		return `'\''`
	}
	return "'" + escape(c) + "'"
}

func escape(c byte) string {
	switch {
	case c == '"' || c == '\\':
		return `\` + string(c)
	case c == '?':
		// Not left bare: "??" followed by some characters is a trigraph.
		return `\?`
	case c < 0x20 || c >= 0x7f:
		return fmt.Sprintf(`\%03o`, c)
	}
	return string(c)
}
