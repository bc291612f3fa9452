package shimdriver

import (
	"context"
	"errors"
	"testing"

	"github.com/opensandbox/task-executor/sdk"
)

// TestValidateRuntimeOptions: without ValidateSpec the driver refuses every
// runtime option; with it, the driver's own checks come first and the
// hook has the last word.
func TestValidateRuntimeOptions(t *testing.T) {
	strict := func(_ context.Context, spec sdk.TaskSpec) error {
		for k := range spec.RuntimeOptions {
			if k != "network" {
				return errors.Join(errors.New("unknown option "+k), sdk.ErrInvalidSpec)
			}
		}
		return nil
	}
	spec := func(opts map[string]string) sdk.TaskSpec {
		return sdk.TaskSpec{Process: &sdk.ProcessSpec{Command: []string{"true"}}, RuntimeOptions: opts}
	}
	cases := []struct {
		name  string
		hook  func(context.Context, sdk.TaskSpec) error
		spec  sdk.TaskSpec
		valid bool
	}{
		{"no options, no hook", nil, spec(nil), true},
		{"options, no hook", nil, spec(map[string]string{"network": "on"}), false},
		{"a known option", strict, spec(map[string]string{"network": "on"}), true},
		{"an unknown option", strict, spec(map[string]string{"netwrk": "on"}), false},
		{"the driver's checks first", strict, sdk.TaskSpec{RuntimeOptions: map[string]string{"network": "on"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := New(Options{Name: "test", ValidateSpec: tc.hook})
			err := d.Validate(t.Context(), tc.spec)
			if tc.valid != (err == nil) || (err != nil && !errors.Is(err, sdk.ErrInvalidSpec)) {
				t.Errorf("Validate: %v, want valid %v (or an ErrInvalidSpec)", err, tc.valid)
			}
		})
	}
}
