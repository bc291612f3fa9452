package sdk

import (
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// ValidateResources checks requests and limits the way the Kubernetes API
// server checks a container's: only cpu and memory (a node agent has no
// scheduler to account extended resources, and ephemeral-storage is not
// enforced), no negative quantity, and no request above its limit. field
// names the requirements in the error ("spec.process.resources"). The
// error wraps ErrInvalidSpec.
func ValidateResources(field string, r *corev1.ResourceRequirements) error {
	if r == nil {
		return nil
	}
	if len(r.Claims) > 0 {
		return fmt.Errorf("%s.claims: resource claims are not supported (there is no API server to allocate them): %w", field, ErrInvalidSpec)
	}
	supported := []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}
	for _, part := range []struct {
		name string
		list corev1.ResourceList
	}{{"limits", r.Limits}, {"requests", r.Requests}} {
		for _, name := range sortedNames(part.list) {
			q := part.list[name]
			if !slices.Contains(supported, name) {
				return fmt.Errorf("%s.%s[%s]: not supported: only cpu and memory are (%s is neither enforced nor accounted here): %w", field, part.name, name, name, ErrInvalidSpec)
			}
			if q.Sign() < 0 {
				return fmt.Errorf("%s.%s[%s]: %s must be greater than or equal to 0: %w", field, part.name, name, q.String(), ErrInvalidSpec)
			}
		}
	}
	for _, name := range sortedNames(r.Requests) {
		req := r.Requests[name]
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			return fmt.Errorf("%s.requests[%s]: %s must be less than or equal to the %s limit (%s): %w", field, name, req.String(), name, lim.String(), ErrInvalidSpec)
		}
	}
	return nil
}

func sortedNames(l corev1.ResourceList) []corev1.ResourceName {
	names := make([]corev1.ResourceName, 0, len(l))
	for n := range l {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
