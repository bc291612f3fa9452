// Package logs reads a task's output from the task's directory, as
// GET /tasks/{name}/logs serves it.
//
// It is a package of its own, as the kubelet's log reading is
// (pkg/kubelet/kuberuntime/logs), because what it has to get right has
// nothing to do with HTTP: which files a runtime leaves (the plugin
// contract, sdk/logs.go), their rotation under the output cap while they
// are read, following them with inotify, and decoding the CRI log format.
// The HTTP layer parses a request, calls Open and Copy, and flushes.
//
// Where the output is: a runtime that keeps a CRI container log leaves one
// file, sdk.ContainerLog, in the task's directory (the cri runtime); the
// others write sdk.StdoutLog and sdk.StderrLog there as plain text
// (process, nsenter). Which one a task has is read from its directory, so
// that the host need not know what each runtime does. Each file's older
// part, rotated aside to its name plus sdk.RotatedSuffix, comes first, and
// the two parts are read as one: a line the rotation cut in two is served
// whole.
//
// Order of both streams: a CRI log keeps the order of its records, and
// lines come in that order. Two plain files do not tell which line came
// first, so a snapshot is stdout's lines, then stderr's; a follower serves
// what is there that way, and then lines as they arrive.
//
// Lines: every line served ends with a newline, including a last line the
// task left unterminated; while following, such a line is held until it is
// ended or the task has ended. A line longer than MaxLineBytes is cut into
// lines of about that size. Options.TailLines keeps the last lines of what
// would be served without it (for plain files of both streams: the end of
// stdout-then-stderr); Options.LimitBytes caps the bytes served, which may
// end in the middle of a line.
package logs

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/hashicorp/go-hclog"

	"github.com/opensandbox/task-executor/internal/beneath"
	"github.com/opensandbox/task-executor/sdk"
)

// MaxLineBytes bounds the part of a line held in memory per stream: a
// longer line is served as several.
const MaxLineBytes = 256 << 10

// NoLimit, as Options.TailLines or Options.LimitBytes, serves everything.
const NoLimit = -1

// Options says what a Reader serves.
type Options struct {
	// Stdout and Stderr pick the streams served.
	Stdout, Stderr bool
	// TailLines keeps the last TailLines lines (0: none); NoLimit keeps
	// all.
	TailLines int
	// LimitBytes caps the bytes served (0: none); NoLimit serves all.
	LimitBytes int64
	// Follow makes Copy serve the output as it comes: until Ended is
	// closed (the task has ended) and what is left is drained, Copy's
	// context ends, or LimitBytes is reached. Without it, or with Ended
	// closed at Open, Copy serves what there is at Open and no more: a
	// task that writes fast would otherwise keep the answer from ending.
	Follow bool
	Ended  <-chan struct{}
	// Log receives what is worth knowing but not an error (a follower
	// that polls, records skipped as malformed); nil discards it.
	Log hclog.Logger
}

// Reader reads one task's output, once (Copy), and holds its files open
// until Close.
type Reader struct {
	dir    string
	opts   Options
	follow bool
	// plain is set while the task's output is read from its plain files: a
	// follower switches to the container log if one appears meanwhile.
	plain  bool
	chains []*chain
	// tail, until the first pump, is the number of lines a CRI log keeps
	// from the end of what is there; NoLimit keeps all.
	tail int
	buf  []byte
}

// Open opens the output in dir, a task's directory. An error wraps
// fs.ErrNotExist when dir is not there (the task was deleted meanwhile).
func Open(dir string, opts Options) (*Reader, error) {
	if _, err := beneath.IsDir(filepath.Dir(dir), filepath.Base(dir)); err != nil {
		return nil, fmt.Errorf("while looking at the task's directory: %w", err)
	}
	if opts.Log == nil {
		opts.Log = hclog.NewNullLogger()
	}
	r := &Reader{dir: dir, opts: opts, follow: opts.Follow && !isClosed(opts.Ended), tail: NoLimit, buf: make([]byte, readChunk)}
	ok, err := r.openContainerLog()
	if err != nil {
		return nil, err
	}
	if ok {
		return r, nil
	}
	if err := r.openPlain(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// openContainerLog opens the CRI log, if there is one.
func (r *Reader) openContainerLog() (bool, error) {
	c, err := openChain(r.dir, sdk.ContainerLog, r.follow, newCRIDecoder(r.opts.Stdout, r.opts.Stderr))
	if err != nil {
		return false, err
	}
	if !c.found() {
		c.close()
		return false, nil
	}
	r.Close()
	r.chains, r.plain, r.tail = []*chain{c}, false, r.opts.TailLines
	return true, nil
}

// openPlain opens the plain files of the streams asked for, stdout's
// first. A file not there yet is read once it appears, when following.
func (r *Reader) openPlain() error {
	r.plain = true
	for _, s := range []struct {
		want bool
		name string
	}{{r.opts.Stdout, sdk.StdoutLog}, {r.opts.Stderr, sdk.StderrLog}} {
		if !s.want {
			continue
		}
		c, err := openChain(r.dir, s.name, r.follow, plainLines{})
		if err != nil {
			return err
		}
		r.chains = append(r.chains, c)
	}
	if r.opts.TailLines >= 0 {
		return tailChains(r.chains, r.opts.TailLines)
	}
	return nil
}

// Following reports whether Copy follows the output: Options.Follow, and
// the task had not ended at Open.
func (r *Reader) Following() bool { return r.follow }

// Copy writes the output to w, as the options say. If w has a Flush()
// error method, Copy calls it whenever what has been read is written, so
// that a follower's client sees lines as they come. Copy returns an error
// when reading fails; a failure to write ends it without one, as the end
// of ctx does: the writer's owner knows why.
func (r *Reader) Copy(ctx context.Context, w io.Writer) error {
	out := newLineWriter(w, r.opts.LimitBytes)
	if !r.follow {
		err := r.pump(out, true)
		out.flush()
		return err
	}

	// Whichever ends the stream wakes the watcher at once.
	wakeCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if r.opts.Ended != nil {
		go func() {
			select {
			case <-r.opts.Ended:
			case <-wakeCtx.Done():
			}
			cancel()
		}()
	}
	wt := newDirWatcher(r.dir)
	defer wt.close()
	stopWake := context.AfterFunc(wakeCtx, wt.wake)
	defer stopWake()
	if !wt.inotify() {
		r.opts.Log.Debug("following a task's output by polling: no inotify instance")
	}
	for {
		final := isClosed(r.opts.Ended)
		// A container task's log appears only when its container starts:
		// until then the plain files, missing or empty, were what there
		// was to open.
		if r.plain && !r.readAny() {
			// One that cannot be opened yet is tried again next round, as
			// one not there yet is.
			_, _ = r.openContainerLog()
		}
		if err := r.pump(out, final); err != nil {
			return err
		}
		out.flush()
		if final || out.done() {
			return nil
		}
		wt.wait(wakeCtx)
		if ctx.Err() != nil {
			return nil
		}
	}
}

// pump writes the lines that have come since the last call. final:
// nothing more is coming (or the caller serves a snapshot), so a last,
// unterminated line is served too.
func (r *Reader) pump(out *lineWriter, final bool) error {
	emit := out.line
	var ring *lineRing
	if r.tail >= 0 {
		// Records tell nothing of lines before they are decoded, so a CRI
		// log's last lines are found by decoding all and keeping them.
		ring = &lineRing{n: r.tail}
		emit = ring.add
	}
	for _, c := range r.chains {
		if err := c.pump(r.buf, emit, out.done); err != nil {
			return err
		}
		if final {
			c.end(emit)
		}
	}
	if ring != nil {
		ring.writeTo(out)
		r.tail = NoLimit
	}
	return nil
}

// readAny reports whether any output has been read.
func (r *Reader) readAny() bool {
	for _, c := range r.chains {
		if c.read > 0 {
			return true
		}
	}
	return false
}

// Close releases the files. It reports the records of a CRI log that were
// skipped as malformed (a torn record after a crash, a stray line) to the
// options' Log.
func (r *Reader) Close() error {
	for _, c := range r.chains {
		c.close()
		if d, ok := c.format.(*criDecoder); ok && d.malformed > 0 {
			r.opts.Log.Debug("skipped malformed records of a container log", "records", d.malformed)
		}
	}
	r.chains = nil
	return nil
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
