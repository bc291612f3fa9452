package main

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// envShim names the shim executable for the runtimes (see
// shimdriver.FindShim).
const envShim = "TASK_EXECUTOR_SHIM"

// shimFile puts the embedded shim in a sealed file in memory, which the
// runtimes start their shims from through /proc/self/fd: the data
// directory, the executable's directory and /tmp may all be read-only or
// mounted noexec in a pod; memory is neither, and nothing is left on disk.
// It returns nil when this binary has no shim in it.
func shimFile() (*os.File, error) {
	if len(embeddedShim) == 0 {
		return nil, nil
	}
	// MFD_EXEC says the file is meant to be executed, which kernels with
	// vm.memfd_noexec=1 require; older kernels do not know the flag.
	fd, err := unix.MemfdCreate("task-executor-shim", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate("task-executor-shim", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("while creating the shim's file in memory: %w", err)
	}
	rw := os.NewFile(uintptr(fd), "task-executor-shim")
	defer rw.Close()
	if _, err := rw.Write(embeddedShim); err != nil {
		return nil, fmt.Errorf("while writing the shim's file in memory: %w", err)
	}
	// Sealed, no process that is given it can change what every later
	// shim runs.
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(rw.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return nil, fmt.Errorf("while sealing the shim's file in memory: %w", err)
	}
	// Read-only from here: a file open for writing cannot be executed.
	ro, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", rw.Fd()))
	if err != nil {
		return nil, fmt.Errorf("while reopening the shim's file in memory: %w", err)
	}
	return ro, nil
}
