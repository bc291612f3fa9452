package shim

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
)

// jobFD is the descriptor of the shim's socket to its launcher.
const jobFD = 3

// Main is the shim process's main function, started by a Launcher with its
// end of a socket pair as descriptor 3. It waits for a job, runs the task
// and returns the process exit code. A shim whose launcher goes away before
// sending a job simply exits.
func Main(args []string) int {
	// One P is plenty for a process that mostly sleeps in wait4, and keeps
	// the per-task memory small.
	runtime.GOMAXPROCS(1)
	// Nothing the shim inherited may reach the task, nor be held open by
	// the shim: whatever the plugin's own parent left open without
	// close-on-exec is closed, and the socket is kept from the task.
	closeInherited()
	syscall.CloseOnExec(jobFD)
	// The shim lives in its own session; swallow the signals a terminal or a
	// careless kill would send so the task's supervisor stays up. Handlers
	// (unlike ignored dispositions) are reset for the task at exec.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM, syscall.SIGPIPE)

	warmUp()
	sock := os.NewFile(jobFD, "launcher")
	j, lock, err := receiveJob(sock)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			fmt.Fprintln(os.Stderr, "task-executor-shim:", err)
			return 1
		}
		return 0 // an idle shim whose launcher went away
	}
	defer lock.Close()
	log := hclog.New(&hclog.LoggerOptions{Name: "shim", Output: &lazyFile{path: filepath.Join(j.Dir, logFile)}, Level: hclog.Info})
	s := &supervisor{dir: j.Dir, spec: j.Spec, log: log, sock: sock}
	if err := s.run(); err != nil {
		log.Error("shim failed", "error", err)
		return 1
	}
	return 0
}

// warmUp runs, while the shim waits for a job, the code a job needs first
// (JSON, /proc): on a cold process each first use costs page faults and
// cache fills that would otherwise lie on the path of a task's start.
func warmUp() {
	var j job
	_ = json.Unmarshal([]byte(`{"dir":"/","spec":{"argv":["true"],"env":["A=b"],"stdout":"/o","stderr":"/e","timeout":1,"grace":1}}`), &j)
	st := State{ShimPID: os.Getpid(), StartedAt: time.Now()}
	st.ShimStart, _ = procStart(st.ShimPID)
	_, _ = json.Marshal(report{State: &st})
	_, _ = os.Stat(os.DevNull)
}

// lazyFile is the shim's log: the file is created on the first write, so
// a task that gives the shim nothing to say costs no file.
type lazyFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func (l *lazyFile) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return 0, err
		}
		l.f = f
	}
	return l.f.Write(b)
}

// closeInherited closes the descriptors above the socket that the shim
// inherited. The Go runtime's own descriptors are close-on-exec, which is
// how they are told apart.
func closeInherited() {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= jobFD {
			continue
		}
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && flags&unix.FD_CLOEXEC == 0 {
			unix.Close(fd)
		}
	}
}

// receiveJob reads the job and the lock's descriptor from the launcher.
func receiveJob(sock *os.File) (job, *os.File, error) {
	var j job
	b := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	var n, oobn int
	var err error
	for {
		n, oobn, _, _, err = unix.Recvmsg(int(sock.Fd()), b, oob, unix.MSG_CMSG_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return j, nil, fmt.Errorf("while waiting for a job: %w", err)
	}
	if n == 0 {
		return j, nil, io.EOF
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return j, nil, fmt.Errorf("the job carries no lock descriptor (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return j, nil, fmt.Errorf("the job carries no lock descriptor (%v)", err)
	}
	lock := os.NewFile(uintptr(fds[0]), "state directory")
	line, err := bufio.NewReader(sock).ReadBytes('\n')
	if err != nil {
		lock.Close()
		return j, nil, fmt.Errorf("while reading the job: %w", err)
	}
	if err := json.Unmarshal(line, &j); err != nil {
		lock.Close()
		return j, nil, fmt.Errorf("while decoding the job: %w", err)
	}
	return j, lock, nil
}

type supervisor struct {
	dir  string
	spec Spec
	log  hclog.Logger
	sock *os.File

	mu            sync.Mutex
	pid           int  // the task's PID, also its process group ID
	reaped        bool // once true, pid may belong to someone else: never signal it
	stopRequested bool
	timedOut      bool
	killTimer     *time.Timer
	killAt        time.Time
}

func (s *supervisor) run() error {
	startedAt := time.Now()
	pid, err := s.start()
	if err != nil {
		exit := startError(err, startedAt)
		s.log.Info("task could not start", "error", err)
		if werr := writeExit(s.dir, exit); werr != nil {
			return werr
		}
		s.report(report{Exit: &exit})
		return nil
	}
	st := State{ShimPID: os.Getpid(), PID: pid, StartedAt: startedAt}
	st.ShimStart, _ = procStart(st.ShimPID)
	st.PIDStart, _ = procStart(pid)
	s.mu.Lock()
	s.pid = pid
	s.mu.Unlock()
	s.send(report{State: &st})
	record := time.AfterFunc(recordDelay, func() { s.record(st) })
	if s.spec.Timeout > 0 {
		time.AfterFunc(s.spec.Timeout-time.Since(startedAt), s.timeout)
	}
	exit := s.wait(startedAt)
	record.Stop()
	// The launcher, if it still listens, hears first; the record follows.
	// Either one reaching the host is enough for the exit to be known.
	s.report(report{Exit: &exit})
	return writeExit(s.dir, exit)
}

// record writes the task's state and opens the control FIFO (see
// recordDelay).
func (s *supervisor) record(st State) {
	if err := writeJSON(s.dir, stateFile, st); err != nil {
		// Without state.json nobody could find the task again: better to
		// end it now than to leave it running unsupervised.
		s.signal(syscall.SIGKILL)
		s.log.Error("cannot record the task's state; killed it", "error", err)
		return
	}
	ctlPath := filepath.Join(s.dir, ctlFile)
	if err := syscall.Mkfifo(ctlPath, 0o600); err != nil {
		s.log.Error("cannot create the control FIFO; the task cannot be stopped through it", "error", err)
		return
	}
	// The FIFO stays open until the shim exits.
	ctl, err := os.OpenFile(ctlPath, os.O_RDWR, 0)
	if err != nil {
		s.log.Error("cannot open the control FIFO; the task cannot be stopped through it", "error", err)
		return
	}
	go s.readControl(ctl)
}

// start forks and execs the task in a new process group.
func (s *supervisor) start() (int, error) {
	argv := s.spec.Argv
	if len(argv) == 0 || argv[0] == "" {
		return 0, &startErr{code: 127, err: errors.New("empty command")}
	}
	path, err := lookPath(argv[0], envValue(s.spec.Env, "PATH"))
	if err != nil {
		return 0, err
	}
	wd := s.spec.Dir
	if wd == "" {
		wd = filepath.Dir(s.dir)
	}
	if fi, err := os.Stat(wd); err != nil {
		return 0, &startErr{code: 128, err: fmt.Errorf("working directory: %w", err)}
	} else if !fi.IsDir() {
		return 0, &startErr{code: 128, err: fmt.Errorf("working directory %s: not a directory", wd)}
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	stdout, err := openLog(s.spec.Stdout)
	if err != nil {
		return 0, &startErr{code: 128, err: err}
	}
	defer stdout.Close()
	stderr, err := openLog(s.spec.Stderr)
	if err != nil {
		return 0, &startErr{code: 128, err: err}
	}
	defer stderr.Close()
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{
		Dir:   wd,
		Env:   s.spec.Env,
		Files: []uintptr{devnull.Fd(), stdout.Fd(), stderr.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return 0, &startErr{code: execErrorCode(err), err: fmt.Errorf("exec %s: %w", path, err)}
	}
	return pid, nil
}

func openLog(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("while opening the output file: %w", err)
	}
	return f, nil
}

// send sends a report to the launcher. A launcher that has gone away is no
// concern of the shim's: the write fails (SIGPIPE is not fatal here) and
// the files tell a restarted plugin everything.
func (s *supervisor) send(r report) {
	b, _ := json.Marshal(r)
	_, _ = s.sock.Write(append(b, '\n'))
}

// report sends the last report and lets go of the socket.
func (s *supervisor) report(r report) {
	s.send(r)
	s.sock.Close()
}

// readControl carries out requests written to the control FIFO, one per
// line: "stop <grace-nanoseconds>".
func (s *supervisor) readControl(ctl *os.File) {
	sc := bufio.NewScanner(ctl)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 || fields[0] != "stop" {
			s.log.Warn("ignoring an unknown control request", "request", sc.Text())
			continue
		}
		grace, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || grace < 0 {
			s.log.Warn("ignoring a stop request with a bad grace period", "request", sc.Text())
			continue
		}
		s.mu.Lock()
		s.stopRequested = true
		s.mu.Unlock()
		s.terminate(time.Duration(grace))
	}
}

func (s *supervisor) timeout() {
	s.mu.Lock()
	if s.reaped {
		s.mu.Unlock()
		return
	}
	s.timedOut = true
	s.mu.Unlock()
	s.log.Info("task timed out", "timeout", s.spec.Timeout.String())
	s.terminate(s.spec.Grace)
}

// terminate sends SIGTERM to the task's process group and makes sure a
// SIGKILL follows within grace. A later request with a shorter grace brings
// the SIGKILL forward; a longer one never delays it.
func (s *supervisor) terminate(grace time.Duration) {
	if grace <= 0 {
		s.signal(syscall.SIGKILL)
		return
	}
	s.signal(syscall.SIGTERM)
	s.mu.Lock()
	defer s.mu.Unlock()
	at := time.Now().Add(grace)
	if s.killTimer != nil && !at.Before(s.killAt) {
		return
	}
	if s.killTimer != nil {
		s.killTimer.Stop()
	}
	s.killAt = at
	s.killTimer = time.AfterFunc(grace, func() { s.signal(syscall.SIGKILL) })
}

// signal signals the task's whole process group, unless the task has been
// reaped (its PID, and so the group ID, may then be reused).
func (s *supervisor) signal(sig syscall.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pid <= 0 || s.reaped {
		return
	}
	if err := syscall.Kill(-s.pid, sig); err != nil && err != syscall.ESRCH {
		s.log.Warn("cannot signal the task", "signal", sig, "error", err)
	}
}

// wait waits for the task's main process to exit, kills whatever else is
// left in its process group (a task ends with its main process, as a
// container does), reaps it and describes the exit.
func (s *supervisor) wait(startedAt time.Time) Exit {
	for {
		// WNOWAIT leaves the task a zombie, so its PID (and the group ID)
		// cannot be reused while we signal the rest of the group.
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_PID, s.pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err == unix.EINTR {
			continue
		}
		break
	}
	_ = syscall.Kill(-s.pid, syscall.SIGKILL)

	var ws syscall.WaitStatus
	for {
		s.mu.Lock()
		_, err := syscall.Wait4(s.pid, &ws, 0, nil)
		if err == syscall.EINTR {
			s.mu.Unlock()
			continue
		}
		s.reaped = true
		if s.killTimer != nil {
			s.killTimer.Stop()
		}
		s.mu.Unlock()
		break
	}
	exit := Exit{StartedAt: startedAt, FinishedAt: time.Now()}
	switch {
	case ws.Signaled():
		exit.Signal = int32(ws.Signal())
		exit.ExitCode = 128 + exit.Signal
		exit.Reason = ReasonFailed
		exit.Message = fmt.Sprintf("killed by signal %d (%s)", exit.Signal, ws.Signal())
	default:
		exit.ExitCode = int32(ws.ExitStatus())
		exit.Reason = ReasonFailed
		if exit.ExitCode == 0 {
			exit.Reason = ReasonSucceeded
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.timedOut:
		exit.Reason = ReasonTaskTimeout
		exit.Message = fmt.Sprintf("task ran longer than its timeout of %s and was stopped", s.spec.Timeout)
	case s.stopRequested:
		exit.Message = "stopped on request"
	}
	s.log.Debug("task exited", "pid", s.pid, "exitCode", exit.ExitCode, "reason", exit.Reason)
	return exit
}

// startErr is a failure to start the task, with the exit code Kubernetes
// conventions give it.
type startErr struct {
	code int32
	err  error
}

func (e *startErr) Error() string { return e.err.Error() }
func (e *startErr) Unwrap() error { return e.err }

func startError(err error, at time.Time) Exit {
	code := int32(128)
	var se *startErr
	if errors.As(err, &se) {
		code = se.code
	}
	return Exit{ExitCode: code, Reason: ReasonStartError, Message: err.Error(), FinishedAt: at}
}

// execErrorCode maps an exec failure to the shell's exit codes: 127 for
// "not found", 126 for "found but cannot be run".
func execErrorCode(err error) int32 {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR):
		return 127
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EISDIR),
		errors.Is(err, syscall.EPERM), errors.Is(err, syscall.ETXTBSY):
		return 126
	}
	return 128
}

// lookPath finds file the way a shell would with the given PATH (the task's,
// not the shim's).
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		fi, err := os.Stat(file)
		if err != nil {
			return "", &startErr{code: 127, err: fmt.Errorf("exec %s: %w", file, err)}
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", &startErr{code: 126, err: fmt.Errorf("exec %s: permission denied", file)}
		}
		return file, nil
	}
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	denied := ""
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		fi, err := os.Stat(p)
		if err != nil || fi.IsDir() {
			continue
		}
		if fi.Mode()&0o111 == 0 {
			denied = p
			continue
		}
		return p, nil
	}
	if denied != "" {
		return "", &startErr{code: 126, err: fmt.Errorf("exec %s: permission denied", denied)}
	}
	return "", &startErr{code: 127, err: fmt.Errorf("exec %q: executable file not found in $PATH", file)}
}

func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val
		}
	}
	return v
}
