package api

import (
	"fmt"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/opensandbox/task-executor/sdk"
)

// validate checks what can be checked without a runtime. The name check
// also keeps a name from ever reaching outside the data directory.
func validate(t taskIn) error {
	if t.Name == "" {
		return fmt.Errorf("name is required")
	}
	if errs := validation.IsDNS1123Subdomain(t.Name); len(errs) > 0 {
		return fmt.Errorf("name %q is not a valid task name (a DNS-1123 subdomain): %s", t.Name, strings.Join(errs, "; "))
	}
	if t.Spec == nil {
		return fmt.Errorf("task %q: spec is required", t.Name)
	}
	switch t.Spec.Kind() {
	case sdk.KindProcess:
		return validateProcess(t.Name, t.Spec.Process)
	case sdk.KindContainer:
		if t.Spec.Container.Image == "" {
			return fmt.Errorf("task %q: spec.container.image is required", t.Name)
		}
		return nil
	}
	return fmt.Errorf("task %q: exactly one of spec.process and spec.container must be set", t.Name)
}

func validateProcess(name string, p *sdk.ProcessSpec) error {
	if len(p.Command) == 0 || p.Command[0] == "" {
		return fmt.Errorf("task %q: spec.process.command is required and its first element must not be empty", name)
	}
	for i, e := range p.Env {
		if errs := validation.IsEnvVarName(e.Name); len(errs) > 0 {
			return fmt.Errorf("task %q: spec.process.env[%d].name %q: %s", name, i, e.Name, strings.Join(errs, "; "))
		}
		if e.ValueFrom != nil {
			return fmt.Errorf("task %q: spec.process.env[%d]: valueFrom is not supported for process tasks", name, i)
		}
	}
	if p.WorkingDir != "" && !filepath.IsAbs(p.WorkingDir) {
		return fmt.Errorf("task %q: spec.process.workingDir %q must be an absolute path", name, p.WorkingDir)
	}
	if p.TimeoutSeconds != nil && *p.TimeoutSeconds <= 0 {
		return fmt.Errorf("task %q: spec.process.timeoutSeconds must be positive", name)
	}
	return nil
}
