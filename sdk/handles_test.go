package sdk

import (
	"fmt"
	"sync"
	"testing"
)

// TestHandles: concurrent GetOrAdds of one name make one handle; Remove
// takes away only the handle it is given.
func TestHandles(t *testing.T) {
	var tab Handles[*int]
	var wg sync.WaitGroup
	made := make(chan *int, 100)
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, added := tab.GetOrAdd("a", func() *int { return new(int) })
			if added {
				made <- h
			}
		}()
	}
	wg.Wait()
	close(made)
	if len(made) != 1 {
		t.Fatalf("%d handles made for one task, want 1", len(made))
	}
	first := <-made
	if h, ok := tab.Get("a"); !ok || h != first {
		t.Fatalf("Get: %v %v, want the handle made", h, ok)
	}
	if tab.Remove("a", new(int)) {
		t.Error("Remove of another handle removed the task's")
	}
	if !tab.Remove("a", first) {
		t.Error("Remove of the task's handle did nothing")
	}
	if _, ok := tab.Get("a"); ok {
		t.Error("the handle is still there")
	}
	for i := range 3 {
		tab.GetOrAdd(fmt.Sprint(i), func() *int { return new(int) })
	}
	if n := len(tab.All()); n != 3 {
		t.Errorf("All: %d handles, want 3", n)
	}
}
