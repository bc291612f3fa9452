package sdk

import (
	"context"
	"sync"
)

// Publisher fans task status changes out to subscribers (in practice, the
// host's Events stream). Publish never blocks and never drops the latest
// status of a task: a subscriber that falls behind sees only the newest
// status of each task, in the order the tasks first changed, so its backlog
// is bounded by the number of tasks rather than the number of changes.
//
// The zero value is ready to use.
type Publisher struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

type subscriber struct {
	pending map[string]TaskStatus
	order   []string
	wake    chan struct{}
}

// Publish queues s for every current subscriber.
func (p *Publisher) Publish(s TaskStatus) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for sub := range p.subs {
		if _, queued := sub.pending[s.Name]; !queued {
			sub.order = append(sub.order, s.Name)
		}
		sub.pending[s.Name] = s
		select {
		case sub.wake <- struct{}{}:
		default:
		}
	}
}

// Subscribe returns a channel of the statuses published from now on. The
// channel is closed once ctx ends.
func (p *Publisher) Subscribe(ctx context.Context) <-chan TaskStatus {
	sub := &subscriber{pending: map[string]TaskStatus{}, wake: make(chan struct{}, 1)}
	p.mu.Lock()
	if p.subs == nil {
		p.subs = map[*subscriber]struct{}{}
	}
	p.subs[sub] = struct{}{}
	p.mu.Unlock()

	out := make(chan TaskStatus)
	go func() {
		defer close(out)
		defer func() {
			p.mu.Lock()
			delete(p.subs, sub)
			p.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.wake:
			}
			for {
				p.mu.Lock()
				if len(sub.order) == 0 {
					p.mu.Unlock()
					break
				}
				name := sub.order[0]
				sub.order = sub.order[1:]
				s := sub.pending[name]
				delete(sub.pending, name)
				p.mu.Unlock()
				select {
				case out <- s:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}
