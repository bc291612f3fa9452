//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || ppc64 || s390x || loong64)

package shim

import (
	"encoding/binary"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// The stop request's payload is packed by hand into a siginfo_t, whose
// layout (contract's Siginfo*, checked against the C library's by static
// assertions in csrc/shim.c) is that of these 64-bit architectures: the
// grace period travels in nanoseconds in the 8-byte si_value, which a 32-bit
// si_value could not hold, and MIPS orders si_errno and si_code the other
// way; elsewhere the package does not build.

// The buffer is handed to the kernel as a unix.Siginfo, so it must be as
// large as one: these fail to compile (a negative array length) otherwise.
var (
	_ [contract.SiginfoSize - unsafe.Sizeof(unix.Siginfo{})]byte
	_ [unsafe.Sizeof(unix.Siginfo{}) - contract.SiginfoSize]byte
)

// queueSignal sends sig with value v to the process behind pidfd, the way
// sigqueue(3) does (si_code SI_QUEUE), which kill(2) cannot.
func queueSignal(pidfd int, sig unix.Signal, v int64) error {
	var info [contract.SiginfoSize]byte
	binary.NativeEndian.PutUint32(info[contract.SiginfoSignoOffset:], uint32(sig))
	code := int32(contract.SIQueue)
	binary.NativeEndian.PutUint32(info[contract.SiginfoCodeOffset:], uint32(code))
	binary.NativeEndian.PutUint32(info[contract.SiginfoPIDOffset:], uint32(os.Getpid()))
	binary.NativeEndian.PutUint32(info[contract.SiginfoUIDOffset:], uint32(os.Getuid()))
	binary.NativeEndian.PutUint64(info[contract.SiginfoValueOffset:], uint64(v))
	return unix.PidfdSendSignal(pidfd, sig, (*unix.Siginfo)(unsafe.Pointer(&info[0])), 0)
}
