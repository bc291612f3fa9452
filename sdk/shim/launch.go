package shim

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// Result is what a shim reports about its task: State once it runs, or
// Exit if it has ended (or could not start). Exactly one is set.
type Result struct {
	State *State
	Exit  *Exit
	// exits, for a shim this process launched, is the connection on which
	// the shim reports the task's exit.
	exits *reportConn
}

// reportConn reads a launched shim's reports.
type reportConn struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

func (c *reportConn) read() (report, error) {
	var r report
	b, err := c.r.ReadBytes('\n')
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("while decoding the shim's report: %w", err)
	}
	return r, nil
}

// WaitExit blocks until the task of a Result from Launch or Inspect has
// ended and returns how. A shim this process launched reports the exit
// itself, the quickest way to learn it; otherwise (or if that report does
// not come) it is Wait.
func (r Result) WaitExit(ctx context.Context, dir string) (Exit, error) {
	if r.Exit != nil {
		return *r.Exit, nil
	}
	if r.exits != nil {
		stop := context.AfterFunc(ctx, func() { _ = r.exits.conn.SetReadDeadline(time.Unix(1, 0)) })
		rep, err := r.exits.read()
		stop()
		r.exits.conn.Close()
		if err == nil && rep.Exit != nil {
			return *rep.Exit, nil
		}
		if ctx.Err() != nil {
			return Exit{}, ctx.Err()
		}
	}
	return Wait(ctx, dir, *r.State)
}

// Launcher starts shims from the task-executor-shim executable at Path. It
// keeps Spares shims started ahead of time, idle until Launch hands one a
// job, so that the start-up of a new program is not on the path of a task's
// start. It is safe for concurrent use.
type Launcher struct {
	path   string
	spares int
	opts   LauncherOptions

	mu      sync.Mutex
	idle    []*idleShim
	filling bool
	closed  bool
}

// idleShim is a started shim that waits for a job on conn.
type idleShim struct {
	pid      int
	conn     *net.UnixConn
	prepared any // what LauncherOptions.Prepare returned for it
}

// LauncherOptions configure a Launcher beyond its spares.
type LauncherOptions struct {
	// Prepare, when set, is called for each shim the launcher starts,
	// before the shim is given a job (for a spare, off the path of a task's
	// start): for example to make a cgroup ahead of time (see package
	// cgroups' Spare). The shim joins the cgroups of the files in join at
	// once, as it joins Spec.Cgroups; the launcher closes them. prepared
	// goes to the Spec.Claim of the Launch that uses the shim. An error
	// drops the shim.
	Prepare func() (prepared any, join []*os.File, err error)
	// Discard is called with what Prepare returned for a shim that is
	// dropped without running a task.
	Discard func(prepared any)
}

// NewLauncher returns a launcher that keeps spares idle shims of the
// executable at path.
func NewLauncher(path string, spares int) *Launcher {
	return NewLauncherWith(path, spares, LauncherOptions{})
}

// NewLauncherWith is NewLauncher with options.
func NewLauncherWith(path string, spares int, opts LauncherOptions) *Launcher {
	l := &Launcher{path: path, spares: spares, opts: opts}
	l.refill()
	return l
}

// discard drops an idle shim that will run no task.
func (l *Launcher) discard(sh *idleShim) {
	sh.conn.Close() // the shim reads EOF and exits
	if sh.prepared != nil && l.opts.Discard != nil {
		l.opts.Discard(sh.prepared)
	}
}

// Launch starts a shim for spec with state directory dir (created if
// needed; a previous attempt's files in it are replaced) and returns once
// the task has started or failed to. It is Launcher.Launch without spares.
func Launch(ctx context.Context, shimPath, dir string, spec Spec) (Result, error) {
	return (&Launcher{path: shimPath}).Launch(ctx, dir, spec)
}

// Launch starts a shim for spec with state directory dir (created if
// needed) and returns once the task has started or failed to. If a shim has
// run a task in dir before, or runs one now, it launches nothing and returns
// an error wrapping ErrLaunched: Inspect tells what became of that task.
// Only one Launch may run per directory at a time.
func (l *Launcher) Launch(ctx context.Context, dir string, spec Spec) (Result, error) {
	if len(spec.Wrap) > 0 && !filepath.IsAbs(spec.Wrap[0]) {
		return Result{}, fmt.Errorf("the wrapper %q is not an absolute path", spec.Wrap[0])
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Result{}, fmt.Errorf("while creating the shim directory: %w", err)
	}
	// Lock the directory before anything else and hand the lock over to the
	// shim: a live shim's files are then never touched, and there is no
	// moment in which a live shim does not hold it.
	lock, err := lockDir(dir)
	if err != nil {
		return Result{}, err
	}
	defer lock.Close()
	for _, name := range []string{stateFile, exitFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return Result{}, fmt.Errorf("%s: %w", filepath.Join(dir, name), ErrLaunched)
		}
	}
	sh, err := l.take()
	if err != nil {
		return Result{}, err
	}
	// Replace the spare a little later, not at once: starting a process
	// now would compete for the CPU with the task just started and with
	// the report of its exit, which short tasks send within milliseconds.
	defer time.AfterFunc(refillDelay, l.refill)
	keep, claimed := false, false
	defer func() {
		switch {
		case keep:
		case claimed:
			// What Prepare made is the task's now, and goes with it.
			sh.conn.Close()
		default:
			l.discard(sh)
		}
	}()
	if spec.Claim != nil {
		if err := spec.Claim(sh.prepared, &spec); err != nil {
			return Result{}, fmt.Errorf("while preparing the task's shim: %w", err)
		}
		claimed = true
	}
	// Encoded once Claim has said which cgroup files go with it.
	job := encodeJob(dir, spec)
	if len(job)-4 > contract.MaxJob {
		return Result{}, fmt.Errorf("the task's command, environment and options take %d bytes, more than a shim reads (%d)", len(job)-4, contract.MaxJob)
	}
	// Handing over the job is local and quick, and is not interrupted: once
	// asked, the shim starts the task even if the caller stops waiting, and
	// a later Inspect finds it.
	if err := join(sh.conn, spec.Cgroups); err != nil {
		return Result{}, err
	}
	fds := []int{int(lock.Fd())}
	if spec.Namespaces != nil {
		fds = append(fds, int(spec.Namespaces.Fd()))
	}
	if spec.OOMCounter != nil {
		fds = append(fds, int(spec.OOMCounter.Fd()))
	}
	if _, _, err := sh.conn.WriteMsgUnix([]byte{contract.MsgJob}, unix.UnixRights(fds...), nil); err != nil {
		return Result{}, l.failed(ctx, dir, "while handing the job to the shim", err)
	}
	if _, err := sh.conn.Write(job); err != nil {
		return Result{}, l.failed(ctx, dir, "while handing the job to the shim", err)
	}
	stop := context.AfterFunc(ctx, func() { _ = sh.conn.SetReadDeadline(time.Unix(1, 0)) })
	rc := &reportConn{conn: sh.conn, r: bufio.NewReader(sh.conn)}
	r, err := rc.read()
	if !stop() || err != nil {
		return Result{}, l.failed(ctx, dir, "while waiting for the shim to start the task", err)
	}
	if r.Refused != "" {
		return Result{}, fmt.Errorf("the shim %s refused the job: %s", l.path, r.Refused)
	}
	res := Result{State: r.State, Exit: r.Exit}
	if res.State != nil {
		keep = true
		res.exits = rc
	}
	return res, nil
}

// jobFormat is the first field of every job: the layout of the rest. A
// shim refuses a job of another format (a plugin built against another SDK
// than the host that gives it its shim) rather than misread it.
const jobFormat = contract.JobFormat

// encodeJob lays a job out the way the shim reads it (see read_job in
// csrc/shim.c): a 4-byte little-endian length, then NUL-terminated fields,
// jobFormat first. The descriptors travel beside it. A change of the layout
// changes contract.JobFormat; TestJobRoundTrip has the shim read back what
// this writes.
func encodeJob(dir string, spec Spec) []byte {
	opts := jobOptions(spec)
	fields := []string{
		jobFormat,
		dir, spec.Stdout, spec.Stderr, spec.Dir,
		strconv.FormatInt(int64(spec.Timeout), 10), strconv.FormatInt(int64(spec.Grace), 10),
		strconv.Itoa(len(spec.Argv)),
	}
	fields = append(fields, spec.Argv...)
	fields = append(fields, strconv.Itoa(len(spec.Env)))
	fields = append(fields, spec.Env...)
	fields = append(fields, boolField(spec.Namespaces != nil))
	fields = append(fields, strconv.FormatInt(max(spec.MaxLogBytes, 0), 10))
	fields = append(fields, strconv.Itoa(len(opts)))
	fields = append(fields, opts...)
	n := 0
	for i, f := range fields {
		// A NUL inside a field would split it; the kernel refuses such
		// arguments and variables anyway, so cut them there.
		if j := strings.IndexByte(f, 0); j >= 0 {
			fields[i] = f[:j]
		}
		n += len(fields[i]) + 1
	}
	b := make([]byte, 4, 4+n)
	binary.LittleEndian.PutUint32(b, uint32(n))
	for _, f := range fields {
		b = append(append(b, f...), 0)
	}
	return b
}

// boolField is a job's boolean field.
func boolField(v bool) string {
	if v {
		return contract.FieldTrue
	}
	return contract.FieldFalse
}

// jobOptions are the job's "key=value" options (see parse_option in
// csrc/shim.c).
func jobOptions(spec Spec) []string {
	var opts []string
	opt := func(key, value string) { opts = append(opts, key+"="+value) }
	if spec.NamespaceFlags != 0 {
		opt(contract.OptNSFlags, strconv.Itoa(spec.NamespaceFlags))
	}
	if spec.ContainerGone != "" {
		opt(contract.OptGone, spec.ContainerGone)
	}
	if spec.OOMCounter != nil {
		opt(contract.OptOOM, contract.FieldTrue)
	}
	for _, w := range spec.Wrap {
		opt(contract.OptWrap, w)
	}
	c := spec.Credentials
	if c == nil {
		return opts
	}
	ids := func(v []uint32) string {
		s := make([]string, len(v))
		for i, id := range v {
			s[i] = strconv.FormatUint(uint64(id), 10)
		}
		return strings.Join(s, ",")
	}
	caps := c.Capabilities
	opt(contract.OptUID, ids(c.UID[:]))
	opt(contract.OptGID, ids(c.GID[:]))
	opt(contract.OptGroups, ids(c.Groups))
	opt(contract.OptCaps, fmt.Sprintf("%x,%x,%x,%x,%x", caps.Bounding, caps.Permitted, caps.Effective, caps.Inheritable, caps.Ambient))
	opt(contract.OptNNP, boolField(c.NoNewPrivs))
	if c.Umask != nil {
		opt(contract.OptUmask, strconv.FormatUint(uint64(*c.Umask), 8))
	}
	if c.AppArmorProfile != "" {
		opt(contract.OptAppArmor, c.AppArmorProfile)
	}
	if c.SELinuxLabel != "" {
		opt(contract.OptSELinux, c.SELinuxLabel)
	}
	for _, f := range c.Seccomp {
		b := make([]byte, 0, 8*len(f.Program))
		for _, in := range f.Program {
			b = binary.NativeEndian.AppendUint16(b, in.Code)
			b = append(b, in.Jt, in.Jf)
			b = binary.NativeEndian.AppendUint32(b, in.K)
		}
		opt(contract.OptSeccomp, strconv.FormatUint(uint64(f.Flags), 10)+":"+hex.EncodeToString(b))
	}
	return opts
}

// ErrLaunched is returned by Launch for a directory in which a shim has run
// (or runs) a task: Inspect it instead of launching again.
var ErrLaunched = errors.New("a shim has run a task in this directory")

// lockDir opens dir and takes its flock, or fails if a shim holds it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("while opening the shim directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("a shim holds %s: %w", dir, ErrLaunched)
		}
		return nil, fmt.Errorf("while locking the shim directory: %w", err)
	}
	return f, nil
}

// failed describes a launch that went wrong after the job was sent.
func (l *Launcher) failed(ctx context.Context, dir, what string, err error) error {
	if ctx.Err() != nil {
		// The shim carries on; a later Inspect finds it.
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	return fmt.Errorf("%s (see %s): %w", what, filepath.Join(dir, logFile), err)
}

// take returns an idle shim, starting one if none is spare, and tops the
// spares up in the background.
func (l *Launcher) take() (*idleShim, error) {
	l.mu.Lock()
	var sh *idleShim
	if n := len(l.idle); n > 0 {
		sh = l.idle[n-1]
		l.idle = l.idle[:n-1]
	}
	l.mu.Unlock()
	if sh != nil {
		return sh, nil
	}
	return l.spawn()
}

// refillDelay is how long after a launch its spare is replaced.
const refillDelay = 5 * time.Millisecond

// refill starts spares in the background until there are enough.
func (l *Launcher) refill() {
	l.mu.Lock()
	if l.filling || l.closed || len(l.idle) >= l.spares {
		l.mu.Unlock()
		return
	}
	l.filling = true
	l.mu.Unlock()
	go func() {
		for {
			l.mu.Lock()
			if l.closed || len(l.idle) >= l.spares {
				l.filling = false
				l.mu.Unlock()
				return
			}
			l.mu.Unlock()
			sh, err := l.spawn()
			if err != nil {
				l.mu.Lock()
				l.filling = false
				l.mu.Unlock()
				return // Launch starts one itself and reports the error
			}
			l.mu.Lock()
			if l.closed {
				l.filling = false
				l.mu.Unlock()
				l.discard(sh)
				return
			}
			l.idle = append(l.idle, sh)
			l.mu.Unlock()
		}
	}()
}

// spawn starts a shim that waits for a job.
func (l *Launcher) spawn() (*idleShim, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("while creating the shim's socket: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "shim")
	theirs := os.NewFile(uintptr(fds[1]), "launcher")
	defer theirs.Close()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		ours.Close()
		return nil, err
	}
	defer devnull.Close()
	// Named for what it is, whatever the path (/proc/self/fd/N for the
	// executor's shim in memory).
	files := make([]uintptr, contract.JobFD+1)
	for i := range files {
		files[i] = devnull.Fd()
	}
	files[contract.JobFD] = theirs.Fd()
	pid, err := syscall.ForkExec(l.path, []string{contract.ShimName}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"GOMAXPROCS=1"},
		Files: files,
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		ours.Close()
		return nil, fmt.Errorf("while starting the shim %s: %w", l.path, err)
	}
	// The shim is our child until we die: reap it whenever it ends, so it
	// does not linger as a zombie.
	go reapWhenDone(pid)
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("while wrapping the shim's socket: %w", err)
	}
	sh := &idleShim{pid: pid, conn: c.(*net.UnixConn)}
	if l.opts.Prepare != nil {
		prepared, files, err := l.opts.Prepare()
		if err != nil {
			sh.conn.Close()
			return nil, fmt.Errorf("while preparing a shim: %w", err)
		}
		sh.prepared = prepared
		err = join(sh.conn, files)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			l.discard(sh)
			return nil, fmt.Errorf("while preparing a shim: %w", err)
		}
	}
	return sh, nil
}

// join has the shim on conn join the cgroups of files (see Spec.Cgroups)
// and waits for its answer.
func join(conn *net.UnixConn, files []*os.File) error {
	if len(files) == 0 {
		return nil
	}
	if len(files) > contract.MaxJoin {
		return fmt.Errorf("%d cgroup files for a shim to join, more than one message carries (%d)", len(files), contract.MaxJoin)
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := conn.WriteMsgUnix([]byte{contract.MsgJoin}, unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("while asking the shim to join its cgroups: %w", err)
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		return fmt.Errorf("while waiting for the shim to join its cgroups: %w", err)
	}
	if b[0] != 0 {
		names := make([]string, len(files))
		for i, f := range files {
			names[i] = f.Name()
		}
		return fmt.Errorf("while the shim joined the cgroups of %s: %w", strings.Join(names, ", "), syscall.Errno(b[0]))
	}
	return nil
}

// Close ends the idle shims. Shims running tasks are not affected.
func (l *Launcher) Close() {
	l.mu.Lock()
	l.closed = true
	idle := l.idle
	l.idle = nil
	l.mu.Unlock()
	for _, sh := range idle {
		l.discard(sh)
	}
}

// reapWhenDone collects a child shim's exit status once it has exited,
// without holding a thread blocked in wait4 meanwhile.
func reapWhenDone(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	_ = awaitPidfd(context.Background(), fd)
	var info unix.Siginfo
	_ = unix.Waitid(unix.P_PIDFD, fd, &info, unix.WEXITED|unix.WNOHANG, nil)
	unix.Close(fd)
}

// awaitPidfd blocks until the process behind the pidfd fd exits or ctx
// ends, through the Go runtime's poller (no thread is parked per process).
// It takes ownership of nothing: the caller closes fd.
func awaitPidfd(ctx context.Context, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("while duplicating a pidfd: %w", err)
	}
	f := os.NewFile(uintptr(dup), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		return n > 0
	})
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Inspect reads a state directory left by a shim, for a plugin that has
// restarted. It returns os.ErrNotExist (wrapped) when no shim has run a task
// there (none was launched, or one ended before starting its task): Launch
// may then try again. alive reports whether the shim still runs.
func Inspect(ctx context.Context, dir string) (res Result, alive bool, err error) {
	if _, err := os.Stat(dir); err != nil {
		return Result{}, false, err
	}
	for {
		alive = shimAlive(dir)
		var exit Exit
		err := readJSON(dir, exitFile, &exit)
		switch {
		case err == nil:
			return Result{Exit: &exit}, alive, nil
		case errors.Is(err, errPartial) && !alive:
			// The shim died writing it.
			var st State
			_ = readJSON(dir, stateFile, &st)
			lost := lostExit(ctx, st)
			return Result{Exit: &lost}, false, nil
		case errors.Is(err, errPartial):
			// Being written: look again below.
		case !errors.Is(err, os.ErrNotExist):
			return Result{}, false, err
		default:
			var st State
			err := readJSON(dir, stateFile, &st)
			switch {
			case err == nil && alive:
				return Result{State: &st}, true, nil
			case err == nil:
				// Dead without an exit file: look once more, the shim may
				// have written it and exited between our reads.
				if err := readJSON(dir, exitFile, &exit); err == nil {
					return Result{Exit: &exit}, false, nil
				}
				lost := lostExit(ctx, st)
				return Result{Exit: &lost}, false, nil
			case !errors.Is(err, os.ErrNotExist):
				return Result{}, false, err
			case !alive:
				return Result{}, false, fmt.Errorf("no shim has run a task in %s: %w", dir, os.ErrNotExist)
			}
		}
		// Alive but has not recorded the task yet: it is about to.
		select {
		case <-ctx.Done():
			return Result{}, true, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// lostExit describes a task whose shim died without recording an exit, and
// kills what is left of the task (if its PID still names it): nobody could
// report on it any more.
func lostExit(ctx context.Context, st State) Exit {
	if sameProcess(st.PID, st.PIDStart) {
		_ = syscall.Kill(-st.PID, syscall.SIGKILL)
	}
	if st.GoneReason != "" && holderEnds(ctx, st) {
		return Exit{
			ExitCode: contract.SignalExitBase + int32(syscall.SIGKILL), Signal: int32(syscall.SIGKILL), Reason: st.GoneReason,
			Message:   fmt.Sprintf(contract.GoneMessage, st.HolderPID),
			StartedAt: st.StartedAt, FinishedAt: time.Now(),
		}
	}
	return Exit{
		ExitCode: contract.SignalExitBase + int32(syscall.SIGKILL), Reason: ReasonStatusUnknown,
		Message:   "the task's shim ended without recording how the task exited; the task was killed",
		StartedAt: st.StartedAt, FinishedAt: time.Now(),
	}
}

// holderWait is how long a shim that died without an exit record waits to
// be explained by the end of its task's container: a runtime that kills a
// container's cgroup kills its processes in no set order, so the shim may
// die a moment before the container's main process.
const holderWait = 2 * time.Second

// holderEnds reports whether the process whose namespaces the task entered
// has exited, or exits within holderWait.
func holderEnds(ctx context.Context, st State) bool {
	fd, err := unix.PidfdOpen(st.HolderPID, unix.PIDFD_NONBLOCK)
	if err != nil {
		return true // ESRCH: gone (and reaped)
	}
	defer unix.Close(fd)
	// Taken first, checked after: a matching start time means the pidfd
	// names the holder, not a process that reused its PID.
	if !runningProcess(st.HolderPID, st.HolderStart) {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, holderWait)
	defer cancel()
	return awaitPidfd(ctx, fd) == nil
}

// shimAlive reports whether a shim holds the directory's lock.
func shimAlive(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return errors.Is(err, unix.EWOULDBLOCK)
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// AwaitGone returns once no shim holds dir (the one that ran a task there
// has exited, and writes nothing into it any more), or with ctx's error.
// A runtime's Remove calls it before it returns, so that the host can
// remove the task's directory at once.
func AwaitGone(ctx context.Context, dir string) error {
	for shimAlive(dir) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("while waiting for the shim of %s to exit: %w", dir, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

// Wait blocks until the shim described by st has ended and returns how the
// task exited. It works for a shim this process launched and for one it
// found again after a restart.
func Wait(ctx context.Context, dir string, st State) (Exit, error) {
	var exit Exit
	if fd, err := unix.PidfdOpen(st.ShimPID, unix.PIDFD_NONBLOCK); err == nil {
		// The pidfd is taken first and the identity checked after: if the
		// start time still matches, the pidfd names our shim, not a
		// process that reused its PID.
		if sameProcess(st.ShimPID, st.ShimStart) {
			err = awaitPidfd(ctx, fd)
		}
		unix.Close(fd)
		if err != nil {
			return Exit{}, err
		}
	}
	if err := readJSON(dir, exitFile, &exit); err == nil {
		return exit, nil
	} else if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errPartial) {
		return Exit{}, err
	}
	return lostExit(ctx, st), nil
}

// Stop asks the shim in dir to stop its task: SIGTERM to the task's process
// group, SIGKILL after grace (at once if grace is zero). It returns ErrGone
// if no shim is running there; the caller then learns the task's end from
// Wait or Inspect.
func Stop(dir string, grace time.Duration) error {
	if grace < 0 {
		grace = 0
	}
	var st State
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := readJSON(dir, stateFile, &st)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("while reading the shim's state: %w", err)
		}
		// No record: either the shim is gone, or it has just started the
		// task and is about to write it.
		if !shimAlive(dir) || time.Now().After(deadline) {
			return ErrGone
		}
		time.Sleep(time.Millisecond)
	}
	fd, err := unix.PidfdOpen(st.ShimPID, 0)
	if errors.Is(err, unix.ESRCH) {
		return ErrGone
	}
	if err != nil {
		return fmt.Errorf("while finding the shim: %w", err)
	}
	defer unix.Close(fd)
	// Taken first, checked after: if the start time still matches, the
	// pidfd names our shim, not a process that reused its PID. A shim that
	// has exited (a zombie not yet reaped) takes no more requests.
	if !runningProcess(st.ShimPID, st.ShimStart) {
		return ErrGone
	}
	if err := queueSignal(fd, stopSignal, int64(grace)); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return ErrGone
		}
		return fmt.Errorf("while sending the stop request to the shim: %w", err)
	}
	return nil
}

// stopSignal carries a stop request to a shim, queued with the grace
// period in nanoseconds as its value.
const stopSignal = unix.Signal(contract.StopSignal)
