package tasks

import (
	"sync"
	"time"
)

// persister writes the final states of tasks, off the path of the requests
// and of the manager's lock. Writes of one task are coalesced: the writer
// always takes the newest record.
type persister struct {
	c *Manager
	q chan *entry

	mu sync.Mutex
	// queued holds the tasks whose write is queued and not yet taken.
	queued map[*entry]bool
}

func newPersister(c *Manager) *persister {
	return &persister{c: c, q: make(chan *entry, 1024), queued: map[*entry]bool{}}
}

func (p *persister) run(workers int) {
	for i := 0; i < workers; i++ {
		p.c.wg.Add(1)
		go func() {
			defer p.c.wg.Done()
			for {
				select {
				case <-p.c.ctx.Done():
					return
				case e := <-p.q:
					p.write(e)
				}
			}
		}()
	}
}

// queue asks for a write of e's final state.
func (p *persister) queue(e *entry) {
	p.mu.Lock()
	if p.queued[e] {
		p.mu.Unlock()
		return
	}
	p.queued[e] = true
	p.mu.Unlock()
	select {
	case p.q <- e:
	default:
		// The queue is full: write from a goroutine of its own rather than
		// block the caller, which holds the manager's lock.
		p.c.wg.Add(1)
		go func() {
			defer p.c.wg.Done()
			select {
			case p.q <- e:
			case <-p.c.ctx.Done(): // drain writes what is still queued
			}
		}()
	}
}

// drain writes what the workers did not get to (at Close).
func (p *persister) drain() {
	p.mu.Lock()
	var left []*entry
	for e := range p.queued {
		left = append(left, e)
	}
	p.mu.Unlock()
	for _, e := range left {
		p.write(e)
	}
}

// write saves e's final state, unless the task is gone: its directory's
// removal and this write are ordered by e.ioMu.
func (p *persister) write(e *entry) {
	c := p.c
	e.ioMu.Lock()
	defer e.ioMu.Unlock()
	p.mu.Lock()
	delete(p.queued, e)
	p.mu.Unlock()
	c.mu.Lock()
	gone := e.del == delGone || c.tasks[e.rec.Name] != e
	rec := e.rec
	c.mu.Unlock()
	if gone || rec.State.Terminated == nil {
		return
	}
	// Written at once (it survives any process's death from then on) and
	// synced in a batch with others within store.FlushInterval: one
	// journal commit for many final states, and none on the path of the
	// requests that do wait for theirs.
	if err := c.store.SetFinal(rec.Name, rec.State); err != nil {
		c.log.Error("cannot save a task's state; will retry", "task", rec.Name, "error", err)
		time.AfterFunc(time.Second, func() {
			if c.ctx.Err() == nil {
				p.queue(e)
			}
		})
	}
}
