package sdk

import "sync"

// Handles is a runtime's table of per-task handles by task name, the role
// of a Nomad driver's task store: Start adds a task's handle (once, however
// often Start is retried), Status, Stop and Remove look it up, List and the
// recovery walk all of them. It is safe for concurrent use; the zero value
// is an empty table.
type Handles[H comparable] struct {
	mu sync.Mutex
	m  map[string]H
}

// GetOrAdd returns name's handle and false if the table has one; otherwise
// it adds the handle newHandle returns and returns it and true. newHandle
// runs with the table locked, so that two concurrent Starts of one task
// get one handle: keep it cheap, and do the task's work after.
func (t *Handles[H]) GetOrAdd(name string, newHandle func() H) (H, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if h, ok := t.m[name]; ok {
		return h, false
	}
	if t.m == nil {
		t.m = map[string]H{}
	}
	h := newHandle()
	t.m[name] = h
	return h, true
}

// Get returns name's handle, if the table has one.
func (t *Handles[H]) Get(name string) (H, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h, ok := t.m[name]
	return h, ok
}

// Remove removes name's handle if it is h, and reports whether it did: a
// handle that replaced h meanwhile (a task of the same name started again)
// stays.
func (t *Handles[H]) Remove(name string, h H) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.m[name]; !ok || cur != h {
		return false
	}
	delete(t.m, name)
	return true
}

// All returns every handle, in no particular order.
func (t *Handles[H]) All() []H {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]H, 0, len(t.m))
	for _, h := range t.m {
		out = append(out, h)
	}
	return out
}
