// Package seccomp reads another process's seccomp filters, as the sidecar
// runtime needs to give a task the main container's and as tests compare
// them.
package seccomp

import (
	"errors"
	"fmt"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim"
)

// ptrace requests for reading another process's seccomp filters
// (linux/ptrace.h).
const (
	ptraceSeccompGetFilter   = 0x420c
	ptraceSeccompGetMetadata = 0x420d
)

// stopTimeout bounds how long reading the filters waits for the process to
// stop (one in uninterruptible sleep stops only when it wakes).
const stopTimeout = 2 * time.Second

// ReadFilters returns the seccomp filters of process pid, oldest first,
// with the flags each was installed with. The kernel gives them only to a
// tracer that holds CAP_SYS_ADMIN and has no filter of its own, and only
// while the process is stopped: the process is stopped for the moment of
// reading (as a debugger stops it) and resumes at once.
func ReadFilters(pid int) ([]shim.SeccompFilter, error) {
	type result struct {
		filters []shim.SeccompFilter
		err     error
	}
	ch := make(chan result, 1)
	go func() {
		// ptrace works per thread: the tracer is this locked thread. It is
		// never unlocked, so the thread ends with the goroutine, which
		// detaches the process even if detaching below failed.
		runtime.LockOSThread()
		f, err := traceFilters(pid)
		ch <- result{f, err}
	}()
	r := <-ch
	return r.filters, r.err
}

func traceFilters(pid int) (filters []shim.SeccompFilter, err error) {
	if err := unix.PtraceSeize(pid); err != nil {
		return nil, fmt.Errorf("while attaching to process %d: %w", pid, err)
	}
	defer func() {
		if derr := unix.PtraceDetach(pid); derr != nil && err == nil && !errors.Is(derr, unix.ESRCH) {
			err = fmt.Errorf("while detaching from process %d: %w", pid, derr)
		}
	}()
	if err := ptrace(unix.PTRACE_INTERRUPT, pid, 0, 0); err != nil {
		return nil, fmt.Errorf("while stopping process %d: %w", pid, err)
	}
	if err := awaitStop(pid); err != nil {
		return nil, err
	}
	for i := 0; ; i++ {
		n, err := ptraceN(ptraceSeccompGetFilter, pid, uintptr(i), 0)
		if errors.Is(err, unix.ENOENT) || (i == 0 && errors.Is(err, unix.EINVAL)) {
			return filters, nil // past the last filter, or none at all
		}
		if err != nil {
			return nil, fmt.Errorf("while reading seccomp filter %d of process %d: %w", i, pid, err)
		}
		prog := make([]unix.SockFilter, n)
		if _, err := ptraceN(ptraceSeccompGetFilter, pid, uintptr(i), uintptr(unsafe.Pointer(&prog[0]))); err != nil {
			return nil, fmt.Errorf("while reading seccomp filter %d of process %d: %w", i, pid, err)
		}
		md := struct{ filterOff, flags uint64 }{filterOff: uint64(i)}
		if _, err := ptraceN(ptraceSeccompGetMetadata, pid, unsafe.Sizeof(md), uintptr(unsafe.Pointer(&md))); err != nil {
			return nil, fmt.Errorf("while reading the flags of seccomp filter %d of process %d: %w", i, pid, err)
		}
		filters = append(filters, shim.SeccompFilter{Flags: uint32(md.flags), Program: prog})
	}
}

// awaitStop waits for the traced process to report its stop.
func awaitStop(pid int) error {
	deadline := time.Now().Add(stopTimeout)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WALL|unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("while waiting for process %d to stop: %w", pid, err)
		case got == pid && ws.Stopped():
			return nil
		case got == pid:
			return fmt.Errorf("process %d ended while being read", pid)
		case time.Now().After(deadline):
			return fmt.Errorf("process %d did not stop within %s to have its seccomp filter read", pid, stopTimeout)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

func ptrace(req, pid int, addr, data uintptr) error {
	_, err := ptraceN(req, pid, addr, data)
	return err
}

func ptraceN(req, pid int, addr, data uintptr) (uintptr, error) {
	r, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), addr, data, 0, 0)
	if e != 0 {
		return 0, e
	}
	return r, nil
}
