package logs

import (
	"bytes"
	"errors"
	"fmt"
	"time"
)

// A CRI container log (what a CRI runtime writes to a container's log
// path) holds one record per line:
//
//	<RFC3339Nano timestamp> <stdout|stderr> <tags> <text>
//
// tags is F (the text ends a line) or P (a partial line: the text goes on
// in the stream's next record, without a newline between), possibly
// followed by more tags after a ':', which are ignored.

// criStream indexes the two streams of a container log.
type criStream int

const (
	criStdout criStream = iota
	criStderr
)

// criRecord is one record of a container log.
type criRecord struct {
	Time    time.Time
	Stream  criStream
	Partial bool
	// Text aliases the parsed line.
	Text []byte
}

var errNoField = errors.New("missing field")

// parseCRIRecord parses one record, without its newline.
func parseCRIRecord(line []byte) (criRecord, error) {
	var r criRecord
	ts, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok {
		return r, fmt.Errorf("no stream after the timestamp: %w", errNoField)
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return r, fmt.Errorf("bad timestamp: %w", err)
	}
	r.Time = t
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok {
		return r, fmt.Errorf("no tag after the stream: %w", errNoField)
	}
	switch string(stream) {
	case "stdout":
		r.Stream = criStdout
	case "stderr":
		r.Stream = criStderr
	default:
		return r, fmt.Errorf("unknown stream %q", stream)
	}
	// An empty full line may come without the space after its tag.
	tags, text, _ := bytes.Cut(rest, []byte{' '})
	tag, _, _ := bytes.Cut(tags, []byte{':'})
	switch string(tag) {
	case "F":
	case "P":
		r.Partial = true
	default:
		return r, fmt.Errorf("unknown tag %q", tag)
	}
	r.Text = text
	return r, nil
}

// criDecoder is the format of a CRI log: it turns records back into the
// lines the container wrote, keeping the streams asked for. A line is
// emitted at its last (F) record, so the lines of the two streams never
// mix, and they come in the order in which they were completed.
type criDecoder struct {
	keep [2]bool
	// partial holds each stream's open line; open tells an open empty
	// line from none.
	partial [2][]byte
	open    [2]bool
	// since orders the open lines for flush.
	since [2]uint64
	seq   uint64
	// malformed counts the records that could not be parsed; they are
	// skipped (a torn record after a crash, a stray line).
	malformed int
}

func newCRIDecoder(stdout, stderr bool) *criDecoder {
	return &criDecoder{keep: [2]bool{stdout, stderr}}
}

// line decodes one record (a line of the log without its newline) and
// calls emit with every line it completes. emit must not keep the slice.
func (d *criDecoder) line(b []byte, emit func([]byte)) {
	r, err := parseCRIRecord(b)
	if err != nil {
		d.malformed++
		return
	}
	i := r.Stream
	if !d.keep[i] {
		return
	}
	d.seq++
	if !r.Partial && !d.open[i] {
		emit(r.Text)
		return
	}
	if !d.open[i] {
		d.open[i], d.since[i] = true, d.seq
	}
	d.partial[i] = append(d.partial[i], r.Text...)
	// A line that never ends is cut rather than held without bound.
	if !r.Partial || len(d.partial[i]) >= MaxLineBytes {
		d.emitOpen(i, emit)
	}
}

// flush emits the open lines, in the order they were begun: the stream
// has ended, or the caller shows what there is so far.
func (d *criDecoder) flush(emit func([]byte)) {
	first, second := criStdout, criStderr
	if d.open[criStderr] && (!d.open[criStdout] || d.since[criStderr] < d.since[criStdout]) {
		first, second = criStderr, criStdout
	}
	for _, i := range []criStream{first, second} {
		if d.open[i] {
			d.emitOpen(i, emit)
		}
	}
}

func (d *criDecoder) emitOpen(i criStream, emit func([]byte)) {
	emit(d.partial[i])
	d.partial[i] = d.partial[i][:0]
	d.open[i] = false
}

// maxHeld: no runtime writes records this long; longer is not a log.
func (d *criDecoder) maxHeld() int { return 2*MaxLineBytes + 1 }

func (d *criDecoder) overlong([]byte, func([]byte)) bool {
	d.malformed++
	return true
}

// end emits the open lines. A record without its newline is not decoded:
// it is being written, or was torn by a crash, and is lost with the crash.
func (d *criDecoder) end(_ []byte, emit func([]byte)) { d.flush(emit) }

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
