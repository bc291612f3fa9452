package tasks

import (
	"bytes"
	"encoding/json"

	"github.com/opensandbox/task-executor/sdk"
)

// specEqual compares specs by their canonical JSON, so that spellings with
// the same meaning (an absent optional list and an empty one) compare
// equal.
func specEqual(a, b sdk.TaskSpec) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
