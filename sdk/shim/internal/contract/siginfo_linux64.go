//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || ppc64 || s390x || loong64)

package contract

// The stop request is packed by hand into a siginfo_t (see queueSignal in
// package shim), whose layout on these 64-bit architectures is: si_signo,
// si_errno, si_code (in that order: not MIPS), padding, then for SI_QUEUE
// si_pid, si_uid and the 8-byte si_value, which carries the grace period in
// nanoseconds (a 32-bit si_value could not). The C side asserts that its C
// library's siginfo_t is laid out so.
const (
	SiginfoSize        = 128
	SiginfoSignoOffset = 0
	SiginfoCodeOffset  = 8
	SiginfoPIDOffset   = 16
	SiginfoUIDOffset   = 20
	SiginfoValueOffset = 24
	// SIQueue is SI_QUEUE, the si_code of a signal sent by sigqueue(3),
	// the only kind of StopSignal the shim takes as a request.
	SIQueue = -1
)

var siginfoDefs = []def{
	{"SIGINFO_SIZE", SiginfoSize},
	{"SIGINFO_SIGNO_OFFSET", SiginfoSignoOffset},
	{"SIGINFO_CODE_OFFSET", SiginfoCodeOffset},
	{"SIGINFO_PID_OFFSET", SiginfoPIDOffset},
	{"SIGINFO_UID_OFFSET", SiginfoUIDOffset},
	{"SIGINFO_VALUE_OFFSET", SiginfoValueOffset},
	{"SIGINFO_SI_QUEUE", SIQueue},
}
