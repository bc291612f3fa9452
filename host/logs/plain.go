package logs

import (
	"fmt"
	"io"
	"path/filepath"
)

// plainLines is the format of a plain log file: its lines are the lines
// served.
type plainLines struct{}

func (plainLines) line(b []byte, emit func([]byte)) { emit(b) }

func (plainLines) maxHeld() int { return MaxLineBytes }

// overlong serves a line that never ends in pieces rather than hold it
// without bound.
func (plainLines) overlong(b []byte, emit func([]byte)) bool {
	emit(b)
	return false
}

func (plainLines) end(rest []byte, emit func([]byte)) {
	if len(rest) > 0 {
		emit(rest)
	}
}

// tailChains positions plain logs, served one after the other, at their
// last n lines: the last log's end first, then what is left to take from
// before it. Only the end of each file is read, however large it is.
func tailChains(chains []*chain, n int) error {
	for i := len(chains) - 1; i >= 0; i-- {
		c := chains[i]
		all := joined(c.parts)
		off := all.size()
		if n > 0 {
			o, found, err := tailOffset(all, off, n)
			if err != nil {
				return fmt.Errorf("while finding the last lines of %s: %w", filepath.Base(c.path), err)
			}
			off, n = o, n-found
		}
		c.seek(off)
	}
	return nil
}

// seek moves c to off bytes into its parts as they were at Open, and lets
// go of the parts before.
func (c *chain) seek(off int64) {
	for len(c.parts) > 1 && off >= c.parts[0].size {
		off -= c.parts[0].size
		c.parts[0].close()
		c.parts = c.parts[1:]
	}
	c.parts[0].off = off
}

// joined reads a log's parts, as they were at Open, as one file, so that
// a line that a rotation cut in two counts once.
type joined []part

func (j joined) size() int64 {
	var n int64
	for _, p := range j {
		n += p.size
	}
	return n
}

func (j joined) ReadAt(b []byte, off int64) (int, error) {
	n := 0
	for _, p := range j {
		if len(b) == 0 {
			break
		}
		if off >= p.size {
			off -= p.size
			continue
		}
		want := min(int64(len(b)), p.size-off)
		m, err := p.f.ReadAt(b[:want], off)
		n, b, off = n+m, b[m:], 0
		if err != nil && err != io.EOF {
			return n, err
		}
		if int64(m) < want {
			// Shorter than at Open: what was there is gone.
			return n, io.EOF
		}
	}
	if len(b) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// tailOffset finds where the last n lines of the first size bytes of f
// begin, reading backwards; found is how many lines there are from there
// (fewer than n when the file has fewer). An unterminated last line counts.
// A line longer than MaxLineBytes counts as its pieces of that size from
// its end, as many as are needed: served lines are never longer, so the
// last n are never more than n × MaxLineBytes from the end, and no more is
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
			if run == MaxLineBytes {
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
