package logs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opensandbox/task-executor/internal/beneath"
	"github.com/opensandbox/task-executor/sdk"
)

// readChunk is the size of each read of a log file.
const readChunk = 32 << 10

// A format turns the lines of a log file into the lines served.
type format interface {
	// line takes a whole line of the file, without its newline; emit
	// must not keep the slice.
	line(b []byte, emit func([]byte))
	// maxHeld is how long an unterminated line may grow before overlong
	// takes it.
	maxHeld() int
	// overlong takes a line that reached maxHeld bytes without its
	// newline; drop says to discard the rest of it.
	overlong(b []byte, emit func([]byte)) (drop bool)
	// end takes what is left when no more is coming: rest, an
	// unterminated last line, and whatever the format holds.
	end(rest []byte, emit func([]byte))
}

// part is one file of a log.
type part struct {
	f    *os.File // nil: the file is not there (yet)
	off  int64
	end  int64 // NoLimit: read to the end, whatever it is by then
	size int64 // at Open
}

// chain reads one log (a stream's plain file, or the container log) as one
// run of bytes across its files: the part rotated aside at Open, then the
// live file, then, while following, the files that later rotations start.
type chain struct {
	path   string // the live file
	follow bool
	// parts[0] is being read; the last is the live file.
	parts  []part
	format format
	// carry is the start of a line whose newline has not come yet; skip
	// is set while the rest of an overlong one is discarded.
	carry []byte
	skip  bool
	read  int64
}

// openChain opens the log name in dir: the live file first, so that a
// rotation between the two opens leaves the rotated part as the file
// already open, and nothing is read twice. Either file may be missing: a
// rotation renames the live file before it starts the next one.
func openChain(dir, name string, follow bool, f format) (*chain, error) {
	c := &chain{path: filepath.Join(dir, name), follow: follow, format: f}
	live, err := openPart(c.path, !follow)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	old, err := openPart(c.path+sdk.RotatedSuffix, true)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		live.close()
		return nil, err
	case live.f != nil && sameFile(old.f, live.f):
		old.close()
	default:
		c.parts = append(c.parts, old)
	}
	c.parts = append(c.parts, live)
	return c, nil
}

// found reports whether any of the log's files was there at Open.
func (c *chain) found() bool {
	for _, p := range c.parts {
		if p.f != nil {
			return true
		}
	}
	return false
}

// openPart opens path as a part; fixed bounds its reads to its size now.
func openPart(path string, fixed bool) (part, error) {
	p := part{end: NoLimit}
	if fixed {
		// A file not there in a snapshot stays so.
		p.end = 0
	}
	f, err := openIn(path)
	if err != nil {
		return p, fmt.Errorf("while opening %s: %w", filepath.Base(path), err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return p, fmt.Errorf("while looking at %s: %w", filepath.Base(path), err)
	}
	p.f, p.size = f, fi.Size()
	if fixed {
		p.end = p.size
	}
	return p, nil
}

// pump feeds the format what has come since the last call, in order,
// until stop says no more is wanted.
func (c *chain) pump(buf []byte, emit func([]byte), stop func() bool) error {
	if live := &c.parts[len(c.parts)-1]; live.f == nil && c.follow {
		// A runtime creates a log file at the stream's first output.
		if f, err := openIn(c.path); err == nil {
			live.f = f
		}
	}
	for {
		p := &c.parts[0]
		if err := c.drain(p, buf, emit, stop); err != nil {
			return err
		}
		if p.f == nil || stop() {
			return nil
		}
		if len(c.parts) == 1 {
			if p.end >= 0 {
				return nil
			}
			next := rotated(p.f)
			if next == nil {
				return nil
			}
			c.parts = append(c.parts, part{f: next, end: NoLimit})
			p = &c.parts[0]
		}
		// The runtime renamed the file aside (the output cap) and writes
		// to a new one; nothing is written to the old one after the
		// rename, so its rest comes first.
		if err := c.drain(p, buf, emit, stop); err != nil {
			return err
		}
		p.close()
		c.parts = c.parts[1:]
	}
}

// drain reads p from its offset to its end (or p.end).
func (c *chain) drain(p *part, buf []byte, emit func([]byte), stop func() bool) error {
	for p.f != nil && !stop() {
		want := int64(len(buf))
		if p.end >= 0 {
			want = min(want, p.end-p.off)
			if want <= 0 {
				break
			}
		}
		n, err := p.f.ReadAt(buf[:want], p.off)
		p.off += int64(n)
		c.read += int64(n)
		c.feed(buf[:n], emit)
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("while reading %s: %w", p.f.Name(), err)
		}
	}
	return nil
}

// feed hands the format b's whole lines and keeps the rest for later.
func (c *chain) feed(b []byte, emit func([]byte)) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if !c.skip {
				c.carry = append(c.carry, b...)
			}
			if len(c.carry) >= c.format.maxHeld() {
				c.skip = c.format.overlong(c.carry, emit)
				c.carry = c.carry[:0]
			}
			return
		}
		switch {
		case c.skip:
			c.skip = false
		case len(c.carry) > 0:
			c.carry = append(c.carry, b[:i]...)
			c.format.line(c.carry, emit)
			c.carry = c.carry[:0]
		default:
			c.format.line(b[:i], emit)
		}
		b = b[i+1:]
	}
}

// end hands the format what is left: nothing more is coming.
func (c *chain) end(emit func([]byte)) {
	c.format.end(c.carry, emit)
	c.carry = c.carry[:0]
}

func (c *chain) close() {
	for i := range c.parts {
		c.parts[i].close()
	}
}

func (p *part) close() {
	if p.f != nil {
		p.f.Close()
		p.f = nil
	}
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

func sameFile(a, b *os.File) bool {
	x, err := a.Stat()
	if err != nil {
		return false
	}
	y, err := b.Stat()
	return err == nil && os.SameFile(x, y)
}
