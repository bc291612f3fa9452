package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/sdk"
)

// A task runs under a supervisor: this very executable, started by the
// plugin with supervisorArg in a session of its own. The supervisor runs
// the attempts, enforces the timeout, carries out stop requests and records
// everything in the task's directory (see state.go). It does not depend on
// the plugin: when the plugin is killed, the task runs on and its end is
// recorded for the next plugin process to find.

// supervisorArg, as the first argument, makes the executable a supervisor.
const supervisorArg = "supervise"

// File descriptors the plugin hands a supervisor.
const (
	// lockFD is retry.lock, already locked by the plugin: the lock passes
	// to the supervisor without a moment in which nobody holds it.
	lockFD = 3
	// handshakeFD is a pipe on which the supervisor says that the first
	// attempt has started (or could not), its status recorded.
	handshakeFD = 4
)

// Exit codes of a task that could not start, as a shell reports them.
const (
	exitNotFound      = 127
	exitNotExecutable = 126
	exitBadDir        = 128
)

// defaultPath is searched when the task's environment has no PATH.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// superviseMain runs the supervisor of the task in dir and returns the
// process's exit code.
func superviseMain(dir string) int {
	// Attempts are started with Pdeathsig, which the kernel ties to the
	// thread that forked them, not to the process: keep that thread alive
	// and the same for every fork.
	runtime.LockOSThread()
	log := hclog.New(&hclog.LoggerOptions{Name: "retry-supervisor", Output: os.Stderr, JSONFormat: true})
	// The lock and the handshake belong to the supervisor, not to the
	// task's processes: a task holding the lock would look alive forever.
	syscall.CloseOnExec(lockFD)
	syscall.CloseOnExec(handshakeFD)
	s := &supervisor{dir: dir, log: log, stops: make(chan time.Duration, 4), handshake: os.NewFile(handshakeFD, "handshake")}
	if err := s.run(); err != nil {
		log.Error("supervisor failed", "dir", dir, "error", err)
		return 1
	}
	return 0
}

// supervisor runs one task.
type supervisor struct {
	dir       string
	log       hclog.Logger
	job       job
	rec       record
	stops     chan time.Duration
	handshake *os.File

	// stopping is set once a stop request came; the task is then not
	// retried. timedOut likewise, for the timeout.
	stopping, timedOut bool
	deadline           <-chan time.Time
}

func (s *supervisor) run() error {
	if err := readJSON(filepath.Join(s.dir, jobFile), &s.job); err != nil {
		return fmt.Errorf("while reading the job: %w", err)
	}
	s.rec = record{SupervisorPID: os.Getpid(), MaxAttempts: s.job.Options.MaxAttempts}
	if err := s.listen(); err != nil {
		return err
	}
	stdout, err := os.OpenFile(s.job.Stdout, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("while opening the task's stdout: %w", err)
	}
	defer stdout.Close()
	stderr, err := os.OpenFile(s.job.Stderr, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("while opening the task's stderr: %w", err)
	}
	defer stderr.Close()

	for n := 1; ; n++ {
		cmd, a, code, err := s.start(n, stdout, stderr)
		if err != nil {
			// A command that cannot start will not start on a retry
			// either: this is the spec's fault, not bad luck.
			now := time.Now()
			if n == 1 {
				s.rec.StartedAt = now
			}
			return s.finish(result{ExitCode: code, Reason: sdk.ReasonStartError, Message: err.Error(), FinishedAt: now})
		}
		if n == 1 {
			s.rec.StartedAt = a.StartedAt
			if s.job.Timeout > 0 {
				s.deadline = time.After(time.Until(a.StartedAt.Add(s.job.Timeout)))
			}
		}
		s.rec.Attempts = append(s.rec.Attempts, a)
		s.save()
		if n == 1 {
			s.shakeHands()
		}
		a = s.wait(cmd, a)
		s.rec.Attempts[n-1] = a
		s.save()
		s.log.Info("attempt ended", "attempt", n, "of", s.job.Options.MaxAttempts, "exitCode", a.ExitCode, "signal", a.Signal)

		res := result{ExitCode: a.ExitCode, Signal: a.Signal, FinishedAt: a.FinishedAt}
		switch {
		case s.timedOut:
			res.Reason = sdk.ReasonTaskTimeout
			res.Message = fmt.Sprintf("timed out after %s, during attempt %d of %d", s.job.Timeout, n, s.job.Options.MaxAttempts)
		case s.stopping:
			res.Message = fmt.Sprintf("stopped during attempt %d of %d", n, s.job.Options.MaxAttempts)
		case a.ExitCode == 0:
			res.Message = fmt.Sprintf("succeeded on attempt %d of %d", n, s.job.Options.MaxAttempts)
		case n == s.job.Options.MaxAttempts:
			res.Message = fmt.Sprintf("failed %d of %d attempts (exit codes %s)", n, s.job.Options.MaxAttempts, s.exitCodes())
		case !s.job.Options.retries(a.ExitCode):
			res.Message = fmt.Sprintf("attempt %d of %d failed with exit code %d, which the runtime option %s does not retry", n, s.job.Options.MaxAttempts, a.ExitCode, OptOnExitCodes)
		default:
			if s.backOff(n) {
				continue
			}
			res.FinishedAt = time.Now()
			if s.timedOut {
				res.Reason = sdk.ReasonTaskTimeout
				res.Message = fmt.Sprintf("timed out after %s, waiting to retry after attempt %d of %d (exit code %d)", s.job.Timeout, n, s.job.Options.MaxAttempts, a.ExitCode)
			} else {
				res.Message = fmt.Sprintf("stopped while waiting to retry after attempt %d of %d (exit code %d)", n, s.job.Options.MaxAttempts, a.ExitCode)
			}
		}
		return s.finish(res)
	}
}

// listen makes the stop request file and starts following it, and SIGTERM
// (an operator's kill of the supervisor: a stop with the default grace
// period).
func (s *supervisor) listen() error {
	path := filepath.Join(s.dir, stopFile)
	// Requests an earlier supervisor of this task read are not this one's.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("while clearing the stop requests: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("while making the stop request file: %w", err)
	}
	ino, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("while following the stop requests: %w", err)
	}
	if _, err := syscall.InotifyAddWatch(ino, path, syscall.IN_MODIFY); err != nil {
		return fmt.Errorf("while following the stop requests: %w", err)
	}
	go s.readStops(f, ino)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT)
	go func() {
		for range sigs {
			s.stops <- s.job.Grace
		}
	}()
	return nil
}

// readStops reads stop requests from f as they are appended, waking on
// ino's events, for as long as the supervisor lives.
func (s *supervisor) readStops(f *os.File, ino int) {
	r := bufio.NewReader(f)
	partial := ""
	events := make([]byte, 4096)
	for {
		// Everything appended so far; a line not yet whole waits.
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				partial += line
				break
			}
			line, partial = partial+line, ""
			v, ok := strings.CutPrefix(strings.TrimSpace(line), "stop ")
			grace, perr := strconv.ParseInt(v, 10, 64)
			if !ok || perr != nil {
				s.log.Warn("ignoring a malformed stop request", "request", line)
				continue
			}
			s.stops <- time.Duration(grace)
		}
		if _, err := syscall.Read(ino, events); err != nil && !errors.Is(err, syscall.EINTR) {
			s.log.Error("cannot follow the stop requests", "error", err)
			return
		}
	}
}

// start starts attempt n. An error is a command that cannot start, with
// the exit code a shell would report for it.
func (s *supervisor) start(n int, stdout, stderr *os.File) (*exec.Cmd, attempt, int32, error) {
	dir := s.job.Dir
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, attempt{}, exitBadDir, fmt.Errorf("working directory %s is not a directory", dir)
	}
	path, err := lookPath(s.job.Argv[0], s.job.Env)
	if err != nil {
		return nil, attempt{}, exitCodeOf(err), err
	}
	cmd := &exec.Cmd{
		Path:   path,
		Args:   s.job.Argv,
		Env:    append(append([]string(nil), s.job.Env...), EnvAttempt+"="+strconv.Itoa(n)),
		Dir:    dir,
		Stdout: stdout,
		Stderr: stderr,
		SysProcAttr: &syscall.SysProcAttr{
			// Its own process group, so that a stop reaches everything the
			// attempt started, and not the supervisor.
			Setpgid: true,
			// Without its supervisor nobody would stop, time out or
			// record the attempt: it must not run on unsupervised.
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if err := cmd.Start(); err != nil {
		return nil, attempt{}, exitCodeOf(err), fmt.Errorf("cannot run %s: %w", s.job.Argv[0], err)
	}
	return cmd, attempt{PID: cmd.Process.Pid, StartedAt: time.Now()}, 0, nil
}

// wait waits for an attempt to end, carrying out stop requests and the
// timeout meanwhile, and returns the attempt with its end.
func (s *supervisor) wait(cmd *exec.Cmd, a attempt) attempt {
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var kill <-chan time.Time
	var killAt time.Time
	// terminate asks the attempt's process group to end, and has it killed
	// after grace; a later request may only shorten that.
	terminate := func(grace time.Duration) {
		at := time.Now().Add(grace)
		if !killAt.IsZero() && !at.Before(killAt) {
			return
		}
		killAt = at
		if grace <= 0 {
			_ = syscall.Kill(-a.PID, syscall.SIGKILL)
			return
		}
		_ = syscall.Kill(-a.PID, syscall.SIGTERM)
		kill = time.After(grace)
	}
	for {
		select {
		case <-exited:
			a.FinishedAt = time.Now()
			// Whatever the attempt left behind in its group ends with it,
			// as a container's processes end with the container.
			_ = syscall.Kill(-a.PID, syscall.SIGKILL)
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			if ws.Signaled() {
				a.Signal = int32(ws.Signal())
				a.ExitCode = 128 + a.Signal
			} else {
				a.ExitCode = int32(ws.ExitStatus())
			}
			return a
		case grace := <-s.stops:
			s.stopping = true
			terminate(grace)
		case <-s.deadline:
			s.timedOut = true
			s.deadline = nil
			terminate(s.job.Grace)
		case <-kill:
			_ = syscall.Kill(-a.PID, syscall.SIGKILL)
		}
	}
}

// backOff waits before attempt n+1 and reports whether to make it: a stop
// request or the timeout during the wait ends the task instead.
func (s *supervisor) backOff(n int) bool {
	d := s.job.Options.backoff(n)
	s.log.Info("retrying", "after", d.String(), "attempt", n+1, "of", s.job.Options.MaxAttempts)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-s.stops:
		s.stopping = true
	case <-s.deadline:
		s.timedOut = true
	}
	return false
}

// finish records how the task ended. The supervisor exits right after;
// the plugin, which waits for its lock, then reads the record.
func (s *supervisor) finish(res result) error {
	s.rec.Result = &res
	err := writeJSON(filepath.Join(s.dir, statusFile), s.rec)
	// Even without a record the plugin must not wait for the handshake
	// forever; it reports the task's end as unknown then.
	s.shakeHands()
	if err != nil {
		return fmt.Errorf("while recording the task's end: %w", err)
	}
	return nil
}

// save records the task's progress. A failure is only logged: the task
// runs on, and its end is recorded (or found missing) later.
func (s *supervisor) save() {
	if err := writeJSON(filepath.Join(s.dir, statusFile), s.rec); err != nil {
		s.log.Error("cannot record the task's progress", "error", err)
	}
}

// shakeHands tells the plugin that the first attempt's status is recorded.
// The plugin may be gone by now (EPIPE), which is fine: a new one finds
// the record.
func (s *supervisor) shakeHands() {
	if s.handshake == nil {
		return
	}
	_, _ = s.handshake.WriteString("started\n")
	_ = s.handshake.Close()
	s.handshake = nil
}

func (s *supervisor) exitCodes() string {
	codes := make([]string, len(s.rec.Attempts))
	for i, a := range s.rec.Attempts {
		codes[i] = strconv.Itoa(int(a.ExitCode))
	}
	return strings.Join(codes, ", ")
}

// lookPath finds a command as execvp would, in the task's PATH rather than
// the supervisor's.
func lookPath(file string, env []string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	path := defaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %q not found in PATH %s: %w", file, path, fs.ErrNotExist)
}

// exitCodeOf maps an error starting a command to a shell's exit code.
func exitCodeOf(err error) int32 {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.ENOEXEC):
		return exitNotExecutable
	}
	return exitBadDir
}
