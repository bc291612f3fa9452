package api

// GET /tasks/{name}/logs serves a task's output as plain lines.
//
// Where the output is: a runtime that keeps a CRI container log leaves one
// file, container.log, in the task's directory (the cri runtime); the
// others write stdout.log and stderr.log there as plain text (process,
// nsenter). Which one a task has is read from its directory, so that the
// API need not know what each runtime does.
//
// Order of stream=all: a CRI log keeps the order of its records, and lines
// come in that order. Two plain files do not tell which line came first, so
// without follow the answer is stdout's lines, then stderr's; with follow,
// what is there is served that way and then lines come as they arrive.
//
// Lines: every line served ends with a newline, including a last line the
// task left unterminated; while following, such a line is held until it is
// ended or the task has terminated. A line longer than maxLineBytes is cut
// into lines of that size. tailLines=N serves the last N lines of what
// would be served without it (for plain files of both streams: the end of
// stdout-then-stderr); limitBytes caps the bytes of the answer, which may
// end in the middle of a line.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/julienschmidt/httprouter"
	"golang.org/x/sys/unix"

	"github.com/opensandbox/task-executor/internal/beneath"
	"github.com/opensandbox/task-executor/sdk"
)

// Output files in a task's directory: the plugin contract's (sdk.StdoutLog
// and the others).
const (
	stdoutFile    = sdk.StdoutLog
	stderrFile    = sdk.StderrLog
	containerFile = sdk.ContainerLog
	// rotatedSuffix names a file's older output, renamed aside under the
	// output cap (--max-task-log-bytes).
	rotatedSuffix = sdk.RotatedSuffix
)

// maxLineBytes bounds the part of a line held in memory per stream.
const maxLineBytes = 256 << 10

// readChunk is the size of each read of a log file.
const readChunk = 32 << 10

// followSafetyNet bounds a follower's sleep between inotify events: on a
// file system whose writers inotify cannot see (a network file system),
// output still shows, late.
const followSafetyNet = time.Second

// followPoll is a follower's period when it has no inotify instance (the
// per-user limit, 128 by default, is reached).
const followPoll = 250 * time.Millisecond

type logQuery struct {
	stdout, stderr bool
	follow         bool
	// tail is the number of lines to keep from the end; -1 keeps all.
	tail int
	// limit caps the bytes served; -1 means no cap.
	limit int64
}

func parseLogQuery(v url.Values) (logQuery, error) {
	q := logQuery{stdout: true, stderr: true, tail: -1, limit: -1}
	switch s := v.Get("stream"); s {
	case "", "all":
	case "stdout":
		q.stderr = false
	case "stderr":
		q.stdout = false
	default:
		return q, fmt.Errorf("stream %q must be stdout, stderr or all", s)
	}
	if s := v.Get("follow"); s != "" {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return q, fmt.Errorf("follow %q must be true or false", s)
		}
		q.follow = b
	}
	if s := v.Get("tailLines"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("tailLines %q must be a whole number of lines, 0 or more", s)
		}
		q.tail = n
	}
	if s := v.Get("limitBytes"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			return q, fmt.Errorf("limitBytes %q must be a whole number of bytes, 1 or more", s)
		}
		q.limit = n
	}
	return q, nil
}

func (s *server) logs(w http.ResponseWriter, req *http.Request, ps httprouter.Params) {
	name := ps.ByName("name")
	q, err := parseLogQuery(req.URL.Query())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	_, ended, ok := s.tasks.Await(name)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %q not found", name))
		return
	}
	dir := s.dirs.Dir(name)
	terminated := isClosed(ended)
	// Without follow, what is there now is served, and no more: a task
	// that writes fast would otherwise keep the answer from ending.
	src, err := openLogs(dir, q, !q.follow || terminated)
	if errors.Is(err, fs.ErrNotExist) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("task %q has no output (deleted meanwhile?)", name))
		return
	}
	if err != nil {
		s.log.Error("cannot open a task's output", "task", name, "error", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	defer func() {
		src.close()
		if n := src.malformed(); n > 0 {
			s.log.Debug("skipped malformed records of a container log", "task", name, "records", n)
		}
	}()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	out := newLineWriter(w, q.limit)
	if !q.follow || terminated {
		if err := src.pump(out, true); err != nil {
			s.log.Warn("reading a task's output failed", "task", name, "error", err)
		}
		out.flush()
		return
	}
	s.follow(req.Context(), name, dir, q, src, out, ended)
}

// follow serves a running task's output as it comes, until the task has
// terminated and its output is drained, the client has gone, the server
// stops, or limitBytes is reached.
func (s *server) follow(ctx context.Context, name, dir string, q logQuery, src logSource, out *lineWriter, ended <-chan struct{}) {

	// Whichever ends the stream wakes the watcher at once.
	wakeCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-ended:
		case <-s.stop:
		case <-wakeCtx.Done():
		}
		cancel()
	}()
	wt := newDirWatcher(dir)
	defer wt.close()
	stopWake := context.AfterFunc(wakeCtx, wt.wake)
	defer stopWake()
	if !wt.inotify() {
		s.log.Debug("following a task's output by polling: no inotify instance", "task", name)
	}

	defer func() { src.close() }()
	for {
		// The server's timeouts count from the request; a stream instead
		// gives each round of writes its own, so that only a client that
		// stops reading is cut off.
		holdOpen(out.rw, 0)
		final := isClosed(ended)
		// A container task's log appears when its container starts; until
		// then its directory holds the store's empty plain files.
		if p, ok := src.(*plainSource); ok && !p.readAny() {
			if f, err := openIn(filepath.Join(dir, containerFile)); err == nil {
				p.close()
				src = newCRISource(f, q, false)
			}
		}
		if err := src.pump(out, final); err != nil {
			s.log.Warn("reading a task's output failed", "task", name, "error", err)
			return
		}
		out.flush()
		if final || out.done() {
			return
		}
		wt.wait(wakeCtx)
		if ctx.Err() != nil || isClosed(s.stop) {
			return
		}
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// logSource reads a task's output files.
type logSource interface {
	// pump writes the lines that have come since the last call. final:
	// nothing more is coming (or the caller serves a snapshot), so a last,
	// unterminated line is served too.
	pump(out *lineWriter, final bool) error
	close()
	// malformed counts the records skipped as unreadable.
	malformed() int
}

// openLogs opens a task's output in dir. snapshot bounds the reads to the
// files' sizes now.
func openLogs(dir string, q logQuery, snapshot bool) (logSource, error) {
	if _, err := beneath.IsDir(filepath.Dir(dir), filepath.Base(dir)); err != nil {
		return nil, fmt.Errorf("while looking at the task's directory: %w", err)
	}
	f, err := openIn(filepath.Join(dir, containerFile))
	if err == nil {
		c := newCRISource(f, q, snapshot)
		// Older records, rotated aside under the output cap, come first.
		if prev, err := openIn(filepath.Join(dir, containerFile+rotatedSuffix)); err == nil {
			if fi, err := prev.Stat(); err == nil {
				c.next, c.nextEnd = c.f, c.end
				c.f, c.end = prev, fi.Size()
			} else {
				prev.Close()
			}
		}
		return c, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("while opening the container log: %w", err)
	}
	return openPlain(dir, q, snapshot)
}

// lineWriter writes lines to the answer, within limitBytes.
type lineWriter struct {
	rw   http.ResponseWriter
	w    *bufio.Writer
	left int64 // -1: no cap
	err  error
}

func newLineWriter(rw http.ResponseWriter, limit int64) *lineWriter {
	return &lineWriter{rw: rw, w: bufio.NewWriterSize(rw, readChunk), left: limit}
}

var newline = []byte{'\n'}

// line writes b and a newline.
func (o *lineWriter) line(b []byte) {
	o.write(b)
	o.write(newline)
}

func (o *lineWriter) write(b []byte) {
	if o.done() {
		return
	}
	if o.left >= 0 && int64(len(b)) > o.left {
		b = b[:o.left]
	}
	n, err := o.w.Write(b)
	if o.left >= 0 {
		o.left -= int64(n)
	}
	if err != nil {
		o.err = err
	}
}

// done: the cap is reached or the client is gone; nothing more is written.
func (o *lineWriter) done() bool { return o.err != nil || o.left == 0 }

// flush sends what is buffered to the client now.
func (o *lineWriter) flush() {
	if o.err != nil {
		return
	}
	if err := o.w.Flush(); err != nil {
		o.err = err
		return
	}
	if err := http.NewResponseController(o.rw).Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		o.err = err
	}
}

// plainFile is one plain output file being read.
type plainFile struct {
	path string
	f    *os.File // nil: the file does not exist (yet)
	off  int64
	end  int64 // -1: read to the end, whatever it is by then
	// carry is the start of a line whose newline has not come yet.
	carry []byte
}

// plainSource reads stdout.log and/or stderr.log, in that order.
type plainSource struct {
	files []*plainFile
	buf   []byte
	read  int64
}

func openPlain(dir string, q logQuery, snapshot bool) (*plainSource, error) {
	p := &plainSource{buf: make([]byte, readChunk)}
	var names []string
	if q.stdout {
		names = append(names, stdoutFile)
	}
	if q.stderr {
		names = append(names, stderrFile)
	}
	// Each stream's older output, rotated aside under the output cap, comes
	// first; it no longer grows.
	var files []string
	var fixed []bool
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(dir, n+rotatedSuffix)); err == nil {
			files, fixed = append(files, n+rotatedSuffix), append(fixed, true)
		}
		files, fixed = append(files, n), append(fixed, snapshot)
	}
	names = files
	sizes := make([]int64, len(names))
	for i, n := range names {
		pf := &plainFile{path: filepath.Join(dir, n), end: -1}
		f, err := openIn(pf.path)
		switch {
		case err == nil:
			pf.f = f
			fi, err := f.Stat()
			if err != nil {
				p.close()
				return nil, fmt.Errorf("while looking at %s: %w", n, err)
			}
			sizes[i] = fi.Size()
			if fixed[i] {
				pf.end = sizes[i]
			}
		case errors.Is(err, fs.ErrNotExist) && fixed[i]:
			// A rotated file replaced since (its output is in the next),
			// or, in a snapshot, a stream with no output yet.
			pf.end = 0
		case !errors.Is(err, fs.ErrNotExist):
			p.close()
			return nil, fmt.Errorf("while opening %s: %w", n, err)
		}
		p.files = append(p.files, pf)
	}
	if q.tail >= 0 {
		// The last lines of the files read one after the other: the last
		// file's end first, then what is left to take from before it.
		want := q.tail
		for i := len(p.files) - 1; i >= 0; i-- {
			pf := p.files[i]
			pf.off = sizes[i]
			if pf.f == nil || want == 0 {
				continue
			}
			off, found, err := tailOffset(pf.f, sizes[i], want)
			if err != nil {
				p.close()
				return nil, fmt.Errorf("while finding the last lines of %s: %w", names[i], err)
			}
			pf.off, want = off, want-found
		}
	}
	return p, nil
}

func (p *plainSource) pump(out *lineWriter, final bool) error {
	for _, pf := range p.files {
		if pf.f == nil && pf.end < 0 {
			// A runtime creates an output file at the stream's first
			// output.
			if f, err := openIn(pf.path); err == nil {
				pf.f = f
			}
		}
		for {
			if err := p.readFile(pf, out); err != nil {
				return err
			}
			if pf.f == nil || pf.end >= 0 || out.done() {
				break
			}
			next := rotated(pf.f)
			if next == nil {
				break
			}
			// The shim renamed the file aside (the output cap) and writes
			// to a new one; nothing is written to the old one after the
			// rename, so its rest is read first.
			if err := p.readFile(pf, out); err != nil {
				next.Close()
				return err
			}
			pf.f.Close()
			pf.f, pf.off = next, 0
		}
		if final && len(pf.carry) > 0 {
			out.line(pf.carry)
			pf.carry = pf.carry[:0]
		}
	}
	return nil
}

// readFile reads pf from its offset to its end (or pf.end).
func (p *plainSource) readFile(pf *plainFile, out *lineWriter) error {
	for pf.f != nil && !out.done() {
		want := int64(len(p.buf))
		if pf.end >= 0 {
			want = min(want, pf.end-pf.off)
			if want <= 0 {
				break
			}
		}
		n, err := pf.f.ReadAt(p.buf[:want], pf.off)
		pf.off += int64(n)
		p.read += int64(n)
		pf.feed(out, p.buf[:n])
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("while reading %s: %w", pf.f.Name(), err)
		}
	}
	return nil
}

// openIn opens a file of a task's directory (<data-dir>/<task>/<file>)
// for reading without following a symbolic link: a task directory, or a
// file in it, replaced by a link never has its target served.
func openIn(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	return beneath.Open(filepath.Dir(dir), filepath.Join(filepath.Base(dir), filepath.Base(path)))
}

// rotated returns the file now at f's path when it is no longer f (a
// runtime renamed f aside to cap the output and writes to a new one), or
// nil.
func rotated(f *os.File) *os.File {
	now, err := os.Stat(f.Name())
	if err != nil {
		return nil
	}
	if was, err := f.Stat(); err != nil || os.SameFile(was, now) {
		return nil
	}
	next, err := openIn(f.Name())
	if err != nil {
		return nil
	}
	return next
}

// feed writes b's complete lines and keeps the rest for later.
func (pf *plainFile) feed(out *lineWriter, b []byte) {
	for len(b) > 0 && !out.done() {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			pf.carry = append(pf.carry, b...)
			if len(pf.carry) >= maxLineBytes {
				out.line(pf.carry)
				pf.carry = pf.carry[:0]
			}
			return
		}
		if len(pf.carry) > 0 {
			pf.carry = append(pf.carry, b[:i]...)
			out.line(pf.carry)
			pf.carry = pf.carry[:0]
		} else {
			out.line(b[:i])
		}
		b = b[i+1:]
	}
}

// readAny reports whether any output has been read.
func (p *plainSource) readAny() bool { return p.read > 0 }

func (p *plainSource) malformed() int { return 0 }

func (p *plainSource) close() {
	for _, pf := range p.files {
		if pf.f != nil {
			pf.f.Close()
			pf.f = nil
		}
	}
}

// tailOffset finds where the last n lines of the first size bytes of f
// begin, reading backwards; found is how many lines there are from there
// (fewer than n when the file has fewer). An unterminated last line counts.
// A line longer than maxLineBytes counts as its pieces of that size from
// its end, as many as are needed: served lines are never longer, so the
// last n are never more than n × maxLineBytes from the end, and no more is
// read however long a line is.
func tailOffset(f io.ReaderAt, size int64, n int) (off int64, found int, err error) {
	if size == 0 || n == 0 {
		return size, 0, nil
	}
	buf := make([]byte, min(int64(readChunk), size))
	// The last byte ends the last line whatever it is.
	end := size - 1
	// run is the bytes of the current line (or piece) seen so far; cut
	// says the byte before it ended a piece, so a newline there ends no
	// further line.
	var run int
	cut := false
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, end); err != nil && err != io.EOF {
		return 0, 0, err
	}
	if last[0] != '\n' {
		run = 1 // an unterminated last line's last byte is its own
	}
	for end > 0 {
		start := max(0, end-int64(len(buf)))
		chunk := buf[:end-start]
		if _, err := f.ReadAt(chunk, start); err != nil && err != io.EOF {
			return 0, 0, err
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] == '\n' {
				if !cut {
					found++
				}
				run, cut = 0, false
				if found == n {
					return start + int64(i) + 1, found, nil
				}
				continue
			}
			run++
			cut = false
			if run == maxLineBytes {
				found++
				run, cut = 0, true
				if found == n {
					return start + int64(i), found, nil
				}
			}
		}
		end = start
	}
	if cut {
		return 0, found, nil
	}
	return 0, found + 1, nil
}

// criSource reads a CRI container log.
type criSource struct {
	f   *os.File
	off int64
	end int64 // -1: read to the end, whatever it is by then
	// next, while f is the rotated older log, is the current one, to be
	// read to nextEnd.
	next    *os.File
	nextEnd int64
	// carry is the start of a record whose newline has not come yet;
	// skip is set while the rest of an overlong record is discarded.
	carry []byte
	skip  bool
	dec   *criDecoder
	// tail, until the first pump, is the number of lines to keep from the
	// end of what is there; -1 keeps all.
	tail int
	buf  []byte
}

func newCRISource(f *os.File, q logQuery, snapshot bool) *criSource {
	c := &criSource{f: f, end: -1, dec: newCRIDecoder(q.stdout, q.stderr), tail: q.tail, buf: make([]byte, readChunk)}
	if snapshot {
		if fi, err := f.Stat(); err == nil {
			c.end = fi.Size()
		}
	}
	return c
}

func (c *criSource) pump(out *lineWriter, final bool) error {
	emit := out.line
	var ring *lineRing
	if c.tail >= 0 {
		// Records tell nothing of lines before they are decoded, so the
		// last lines are found by decoding everything and keeping them.
		ring = &lineRing{n: c.tail}
		emit = ring.add
	}
	for {
		if err := c.readFile(out, emit); err != nil {
			return err
		}
		if out.done() {
			break
		}
		if c.next != nil {
			// The rotated file is read: on to the current one.
			c.f.Close()
			c.f, c.off, c.end, c.next = c.next, 0, c.nextEnd, nil
			continue
		}
		if c.end >= 0 {
			break
		}
		next := rotated(c.f)
		if next == nil {
			break
		}
		// Rotated (the output cap): nothing is written to the old file
		// after the rename, so its rest comes first.
		if err := c.readFile(out, emit); err != nil {
			next.Close()
			return err
		}
		c.f.Close()
		c.f, c.off = next, 0
	}
	// A record without its newline is being written, or was torn by a
	// crash: it is left for later, or lost with the crash.
	if final {
		c.dec.flush(emit)
	}
	if ring != nil {
		ring.writeTo(out)
		c.tail = -1
	}
	return nil
}

// readFile decodes c's file from its offset to its end (or c.end).
func (c *criSource) readFile(out *lineWriter, emit func([]byte)) error {
	for !out.done() {
		want := int64(len(c.buf))
		if c.end >= 0 {
			want = min(want, c.end-c.off)
			if want <= 0 {
				break
			}
		}
		n, err := c.f.ReadAt(c.buf[:want], c.off)
		c.off += int64(n)
		c.feed(c.buf[:n], emit)
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("while reading %s: %w", c.f.Name(), err)
		}
	}
	return nil
}

func (c *criSource) feed(b []byte, emit func([]byte)) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if !c.skip {
				c.carry = append(c.carry, b...)
			}
			if len(c.carry) > 2*maxLineBytes {
				// No runtime writes records this long: not a log.
				c.carry, c.skip = c.carry[:0], true
				c.dec.malformed++
			}
			return
		}
		switch {
		case c.skip:
			c.skip = false
		case len(c.carry) > 0:
			c.carry = append(c.carry, b[:i]...)
			c.dec.record(c.carry, emit)
			c.carry = c.carry[:0]
		default:
			c.dec.record(b[:i], emit)
		}
		b = b[i+1:]
	}
}

func (c *criSource) malformed() int { return c.dec.malformed }

func (c *criSource) close() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
	}
	if c.next != nil {
		c.next.Close()
		c.next = nil
	}
}

// lineRing keeps the last n lines added.
type lineRing struct {
	n     int
	lines [][]byte
	next  int // where the oldest line is once the ring is full
}

func (r *lineRing) add(b []byte) {
	if r.n == 0 {
		return
	}
	if len(r.lines) < r.n {
		r.lines = append(r.lines, append([]byte(nil), b...))
		return
	}
	r.lines[r.next] = append(r.lines[r.next][:0], b...)
	r.next = (r.next + 1) % r.n
}

func (r *lineRing) writeTo(out *lineWriter) {
	for i := range r.lines {
		out.line(r.lines[(r.next+i)%len(r.lines)])
	}
}

// dirWatcher wakes a follower when something changes in a task's
// directory. inotify rather than a poll: output shows at once, and an idle
// follower costs nothing; the watch is on the directory, which also tells
// when a container log appears. Without an inotify instance it polls.
type dirWatcher struct {
	// f is the inotify instance, non-blocking so that its reads obey
	// deadlines; nil when there is none. It is not changed once set: wake
	// reads it from another goroutine.
	f   *os.File
	buf []byte
	// polling is set when f failed; only wait uses it.
	polling bool
}

func newDirWatcher(dir string) *dirWatcher {
	w := &dirWatcher{}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return w
	}
	const mask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return w
	}
	w.f = os.NewFile(uintptr(fd), "inotify:"+dir)
	w.buf = make([]byte, 4096)
	return w
}

func (w *dirWatcher) inotify() bool { return w.f != nil && !w.polling }

// wait returns after a change, at the latest after followSafetyNet (or
// followPoll when polling), and at once when ctx ends.
func (w *dirWatcher) wait(ctx context.Context) {
	if !w.inotify() {
		t := time.NewTimer(followPoll)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return
	}
	_ = w.f.SetReadDeadline(time.Now().Add(followSafetyNet))
	// wake runs after ctx has ended: checked after the deadline is set,
	// a wake cannot be lost between the two.
	if ctx.Err() != nil {
		return
	}
	if _, err := w.f.Read(w.buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// An instance that fails once would fail at every call: poll
		// instead of spinning.
		w.polling = true
	}
}

// wake ends a wait now; it may run at the same time as wait.
func (w *dirWatcher) wake() {
	if f := w.f; f != nil {
		_ = f.SetReadDeadline(time.Unix(1, 0))
	}
}

func (w *dirWatcher) close() {
	if w.f != nil {
		w.f.Close()
	}
}
