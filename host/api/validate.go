package api

import (
	"fmt"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
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
		return fmt.Errorf("task %q: spec is required (or process, in the compatibility format)", t.Name)
	}
	if err := validateRuntimeOptions(t.Name, t.Spec.RuntimeOptions); err != nil {
		return err
	}
	switch t.Spec.Kind() {
	case sdk.KindProcess:
		if t.Spec.TimeoutSeconds != nil || len(t.Spec.Volumes) > 0 {
			return fmt.Errorf("task %q: spec.timeoutSeconds and spec.volumes are for container tasks; a process task sets spec.process.timeoutSeconds", t.Name)
		}
		return validateProcess(t.Name, t.Spec.Process)
	case sdk.KindContainer:
		return validateContainer(t.Name, t.Spec)
	}
	return fmt.Errorf("task %q: exactly one of spec.process and spec.container must be set", t.Name)
}

// validateContainer checks a container spec's shape; whether each mounted
// volume exists and is of a supported type is the runtime's to say.
func validateContainer(name string, spec *sdk.TaskSpec) error {
	c := spec.Container
	if strings.TrimSpace(c.Image) == "" {
		return fmt.Errorf("task %q: spec.container.image is required", name)
	}
	if err := validateEnv(name, "spec.container", c.Env); err != nil {
		return err
	}
	if len(c.EnvFrom) > 0 {
		return fmt.Errorf("task %q: spec.container.envFrom is not supported (there is no API server to read ConfigMaps or Secrets from)", name)
	}
	if c.WorkingDir != "" && !filepath.IsAbs(c.WorkingDir) {
		return fmt.Errorf("task %q: spec.container.workingDir %q must be an absolute path", name, c.WorkingDir)
	}
	if spec.TimeoutSeconds != nil && *spec.TimeoutSeconds < 0 {
		return fmt.Errorf("task %q: spec.timeoutSeconds must not be negative (0: no timeout)", name)
	}
	volumes := map[string]bool{}
	for i, v := range spec.Volumes {
		if errs := validation.IsDNS1123Label(v.Name); len(errs) > 0 {
			return fmt.Errorf("task %q: spec.volumes[%d].name %q: %s", name, i, v.Name, strings.Join(errs, "; "))
		}
		if volumes[v.Name] {
			return fmt.Errorf("task %q: spec.volumes[%d].name %q is declared twice", name, i, v.Name)
		}
		volumes[v.Name] = true
	}
	paths := map[string]bool{}
	for i, m := range c.VolumeMounts {
		if m.Name == "" {
			return fmt.Errorf("task %q: spec.container.volumeMounts[%d].name is required", name, i)
		}
		if !filepath.IsAbs(m.MountPath) {
			return fmt.Errorf("task %q: spec.container.volumeMounts[%d].mountPath %q must be an absolute path", name, i, m.MountPath)
		}
		p := filepath.Clean(m.MountPath)
		if paths[p] {
			return fmt.Errorf("task %q: spec.container.volumeMounts[%d].mountPath %q is mounted twice", name, i, m.MountPath)
		}
		paths[p] = true
		if m.SubPath != "" && (filepath.IsAbs(m.SubPath) || !filepath.IsLocal(m.SubPath)) {
			return fmt.Errorf("task %q: spec.container.volumeMounts[%d].subPath %q must be a relative path inside the volume", name, i, m.SubPath)
		}
		if m.SubPathExpr != "" {
			return fmt.Errorf("task %q: spec.container.volumeMounts[%d].subPathExpr is not supported", name, i)
		}
	}
	return nil
}

func validateEnv(name, field string, env []corev1.EnvVar) error {
	for i, e := range env {
		if errs := validation.IsEnvVarName(e.Name); len(errs) > 0 {
			return fmt.Errorf("task %q: %s.env[%d].name %q: %s", name, field, i, e.Name, strings.Join(errs, "; "))
		}
		if v := e.ValueFrom; v != nil {
			// Resolved when the task starts (see reconcile's downward
			// values); one that cannot be is the task's own StartError, not
			// the request's.
			sources := 0
			for _, set := range []bool{v.FieldRef != nil, v.ResourceFieldRef != nil, v.ConfigMapKeyRef != nil, v.SecretKeyRef != nil} {
				if set {
					sources++
				}
			}
			if sources != 1 {
				return fmt.Errorf("task %q: %s.env[%d].valueFrom must name exactly one source", name, field, i)
			}
			if e.Value != "" {
				return fmt.Errorf("task %q: %s.env[%d]: value and valueFrom cannot both be set", name, field, i)
			}
		}
	}
	return nil
}

func validateProcess(name string, p *sdk.ProcessSpec) error {
	if len(p.Command) == 0 || p.Command[0] == "" {
		return fmt.Errorf("task %q: spec.process.command is required and its first element must not be empty", name)
	}
	if err := validateEnv(name, "spec.process", p.Env); err != nil {
		return err
	}
	if p.WorkingDir != "" && !filepath.IsAbs(p.WorkingDir) {
		return fmt.Errorf("task %q: spec.process.workingDir %q must be an absolute path", name, p.WorkingDir)
	}
	if p.TimeoutSeconds != nil && *p.TimeoutSeconds < 0 {
		return fmt.Errorf("task %q: spec.process.timeoutSeconds must not be negative (0: no timeout)", name)
	}
	if err := sdk.ValidateResources("spec.process.resources", p.Resources); err != nil {
		return fmt.Errorf("task %q: %s", name, strings.TrimSuffix(err.Error(), ": "+sdk.ErrInvalidSpec.Error()))
	}
	return nil
}

// maxRuntimeOptions bounds how many runtime options a task may set; their
// size is bounded with the rest of the spec (--max-spec-bytes).
const maxRuntimeOptions = 64

// validateRuntimeOptions checks the shape of a task's runtime options:
// keys as Kubernetes label keys are (qualified names). What they mean, and
// whether the runtime takes them at all, is the runtime's to say.
func validateRuntimeOptions(name string, opts map[string]string) error {
	if len(opts) > maxRuntimeOptions {
		return fmt.Errorf("task %q: spec.runtimeOptions has %d options, more than %d", name, len(opts), maxRuntimeOptions)
	}
	for k := range opts {
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			return fmt.Errorf("task %q: spec.runtimeOptions key %q: %s", name, k, strings.Join(errs, "; "))
		}
	}
	return nil
}
