//go:build linux && (amd64 || arm64 || riscv64 || ppc64le || ppc64 || s390x || loong64)

package shim

import (
	"encoding/binary"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The stop request's payload is packed by hand into a siginfo_t, whose
// layout this file assumes: 64-bit, with si_signo, si_errno and si_code in
// that order (not MIPS). The grace period travels in nanoseconds in the
// 8-byte si_value (see STOP_SIGNAL in csrc/shim.c), which a 32-bit
// si_value could not hold; elsewhere the package does not build.

// queueSignal sends sig with value v to the process behind pidfd, the way
// sigqueue(3) does (si_code SI_QUEUE), which kill(2) cannot.
func queueSignal(pidfd int, sig unix.Signal, v int64) error {
	// siginfo_t on 64-bit Linux (amd64, arm64): si_signo, si_errno,
	// si_code, padding; then for SI_QUEUE si_pid, si_uid and the 8-byte
	// si_value.
	var info [128]byte
	binary.NativeEndian.PutUint32(info[0:], uint32(sig))
	code := int32(siQueue)
	binary.NativeEndian.PutUint32(info[8:], uint32(code))
	binary.NativeEndian.PutUint32(info[16:], uint32(os.Getpid()))
	binary.NativeEndian.PutUint32(info[20:], uint32(os.Getuid()))
	binary.NativeEndian.PutUint64(info[24:], uint64(v))
	return unix.PidfdSendSignal(pidfd, sig, (*unix.Siginfo)(unsafe.Pointer(&info[0])), 0)
}

// siQueue is SI_QUEUE, the si_code of a signal sent by sigqueue(3).
const siQueue = -1
