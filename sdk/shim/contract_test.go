package shim

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/opensandbox/task-executor/sdk"
	"github.com/opensandbox/task-executor/sdk/shim/internal/contract"
)

// TestContractHeaderIsGenerated: the C side's constants (csrc/contract.h,
// which Build and `make build` compile) are what package contract renders
// now; otherwise the two sides of the shim may disagree.
func TestContractHeaderIsGenerated(t *testing.T) {
	t.Parallel()
	if want := contract.Header(); !bytes.Equal(header, want) {
		t.Fatalf("csrc/contract.h is not what package contract renders: run `go generate` in sdk/shim\n--- want\n%s", want)
	}
}

// TestContractMatchesSDK: what the shim writes for the host is in the sdk
// package's terms.
func TestContractMatchesSDK(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, shim, sdk string }{
		{"ReasonSucceeded", ReasonSucceeded, sdk.ReasonSucceeded},
		{"ReasonFailed", ReasonFailed, sdk.ReasonFailed},
		{"ReasonTaskTimeout", ReasonTaskTimeout, sdk.ReasonTaskTimeout},
		{"ReasonStartError", ReasonStartError, sdk.ReasonStartError},
		{"ReasonOOMKilled", ReasonOOMKilled, sdk.ReasonOOMKilled},
		{"ReasonStatusUnknown", ReasonStatusUnknown, sdk.ReasonStatusUnknown},
		{"RotatedSuffix", contract.RotatedSuffix, sdk.RotatedSuffix},
	} {
		if c.shim != c.sdk {
			t.Errorf("%s: the shim's is %q, the sdk's %q", c.name, c.shim, c.sdk)
		}
	}
}

// TestContractJSONKeys: the keys the shim writes (contract.h's KEY_*) are
// those this package reads, and no key is read that the shim does not
// write.
func TestContractJSONKeys(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		v    any
		keys []string
	}{
		{report{}, contract.ReportKeys},
		{State{}, contract.StateKeys},
		{Exit{}, contract.ExitKeys},
	} {
		typ := reflect.TypeOf(c.v)
		var tags []string
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			tags = append(tags, name)
		}
		if !slices.Equal(tags, c.keys) {
			t.Errorf("%s's JSON keys are %q, the shim's %q", typ.Name(), tags, c.keys)
		}
	}
}
