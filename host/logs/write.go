package logs

import (
	"bufio"
	"io"
)

// Flusher is a writer that holds what it is given until Flush: Copy
// flushes it whenever what has been read is written.
type Flusher interface {
	Flush() error
}

// lineWriter writes the lines served, within Options.LimitBytes.
type lineWriter struct {
	dst  io.Writer
	w    *bufio.Writer
	left int64 // NoLimit: no cap
	err  error
}

func newLineWriter(dst io.Writer, limit int64) *lineWriter {
	if limit < 0 {
		limit = NoLimit
	}
	return &lineWriter{dst: dst, w: bufio.NewWriterSize(dst, readChunk), left: limit}
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

// done: the cap is reached or the writer failed; nothing more is written.
func (o *lineWriter) done() bool { return o.err != nil || o.left == 0 }

// flush sends what is buffered on now.
func (o *lineWriter) flush() {
	if o.err != nil {
		return
	}
	if err := o.w.Flush(); err != nil {
		o.err = err
		return
	}
	if f, ok := o.dst.(Flusher); ok {
		if err := f.Flush(); err != nil {
			o.err = err
		}
	}
}
