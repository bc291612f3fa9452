package tasks

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// Downward are the values of the executor's own pod that a task's env may
// name with valueFrom.fieldRef, by field path ("metadata.name", ...), as the
// kubelet gives a pod's containers through the downward API. The executor
// learns them from its own environment (see cmd/task-executor).
type Downward map[string]string

// resolveEnv returns a copy of spec in which every env entry with
// valueFrom has the value it names instead. A reference that cannot be
// resolved (a field the executor was not given, a Secret or ConfigMap,
// which no API server serves it) is left empty in the copy, and the first
// such is the error: the task cannot start, and says why.
func resolveEnv(spec sdk.TaskSpec, values Downward) (sdk.TaskSpec, error) {
	var env *[]corev1.EnvVar
	switch {
	case spec.Process != nil:
		p := *spec.Process
		spec.Process = &p
		env = &p.Env
	case spec.Container != nil:
		c := *spec.Container
		spec.Container = &c
		env = &c.Env
	default:
		return spec, nil
	}
	if !slices.ContainsFunc(*env, func(e corev1.EnvVar) bool { return e.ValueFrom != nil }) {
		return spec, nil
	}
	*env = slices.Clone(*env)
	var first error
	for i, e := range *env {
		if e.ValueFrom == nil {
			continue
		}
		v, err := values.resolve(e.ValueFrom)
		if err != nil && first == nil {
			first = fmt.Errorf("env %q: %w", e.Name, err)
		}
		(*env)[i] = corev1.EnvVar{Name: e.Name, Value: v}
	}
	return spec, first
}

func (d Downward) resolve(src *corev1.EnvVarSource) (string, error) {
	switch {
	case src.FieldRef != nil:
		if v, ok := d[src.FieldRef.FieldPath]; ok {
			return v, nil
		}
		return "", fmt.Errorf("valueFrom.fieldRef %q cannot be resolved: the executor knows %s", src.FieldRef.FieldPath, d.known())
	case src.SecretKeyRef != nil:
		return "", fmt.Errorf("valueFrom.secretKeyRef %s/%s cannot be resolved: the executor reads no Secrets (there is no API server to read them from)", src.SecretKeyRef.Name, src.SecretKeyRef.Key)
	case src.ConfigMapKeyRef != nil:
		return "", fmt.Errorf("valueFrom.configMapKeyRef %s/%s cannot be resolved: the executor reads no ConfigMaps (there is no API server to read them from)", src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
	case src.ResourceFieldRef != nil:
		return "", fmt.Errorf("valueFrom.resourceFieldRef %q cannot be resolved: the executor knows no container resources", src.ResourceFieldRef.Resource)
	}
	return "", fmt.Errorf("valueFrom names no source")
}

func (d Downward) known() string {
	if len(d) == 0 {
		return "no fields of its pod (give it POD_NAME, POD_NAMESPACE, POD_UID, POD_IP, NODE_NAME, ... from the downward API)"
	}
	paths := make([]string, 0, len(d))
	for p := range d {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return strings.Join(paths, ", ")
}
