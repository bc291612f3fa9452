package cri

import (
	"context"
	"fmt"
	"regexp"

	corev1 "k8s.io/api/core/v1"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opensandbox/task-executor/sdk"
)

// capabilityName is a capability as Kubernetes names it ("NET_ADMIN",
// "CAP_NET_ADMIN" or "ALL").
var capabilityName = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)

// securityContext maps a container's securityContext to CRI's, as the
// kubelet maps it (pkg/kubelet/kuberuntime/security_context.go), or says
// which field this runtime cannot honour: a field is never ignored.
// privilegedPod says whether the sandbox the container goes into may hold
// a privileged container.
func securityContext(sc *corev1.SecurityContext, privilegedPod bool) (*cri.LinuxContainerSecurityContext, error) {
	out := &cri.LinuxContainerSecurityContext{}
	if sc == nil {
		return out, nil
	}
	bad := func(field, why string) error {
		return fmt.Errorf("spec.container.securityContext.%s: %s: %w", field, why, sdk.ErrInvalidSpec)
	}
	if sc.WindowsOptions != nil {
		return nil, bad("windowsOptions", "not supported on Linux")
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		return nil, bad("procMount", fmt.Sprintf("%q is not supported (it needs a user namespace; only Default is)", *sc.ProcMount))
	}
	if c := sc.Capabilities; c != nil {
		caps := &cri.Capability{}
		for field, list := range map[string][]corev1.Capability{"add": c.Add, "drop": c.Drop} {
			for _, name := range list {
				if !capabilityName.MatchString(string(name)) {
					return nil, bad("capabilities."+field, fmt.Sprintf("%q is not a capability name", name))
				}
			}
		}
		for _, name := range c.Add {
			caps.AddCapabilities = append(caps.AddCapabilities, string(name))
		}
		for _, name := range c.Drop {
			caps.DropCapabilities = append(caps.DropCapabilities, string(name))
		}
		out.Capabilities = caps
	}
	if sc.Privileged != nil && *sc.Privileged {
		if !privilegedPod {
			return nil, bad("privileged", "the executor's pod is not privileged, and a privileged container needs a privileged pod sandbox (give one of the pod's containers privileged: true)")
		}
		out.Privileged = true
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		// As the API server refuses it: no_new_privs cannot hold for a
		// process with every privilege.
		if out.Privileged {
			return nil, bad("allowPrivilegeEscalation", "cannot be false when privileged is true")
		}
		if sc.Capabilities != nil {
			for _, name := range sc.Capabilities.Add {
				if name == "SYS_ADMIN" || name == "CAP_SYS_ADMIN" {
					return nil, bad("allowPrivilegeEscalation", "cannot be false when capabilities.add holds SYS_ADMIN")
				}
			}
		}
		out.NoNewPrivs = true
	}
	if sc.RunAsUser != nil {
		if *sc.RunAsUser < 0 {
			return nil, bad("runAsUser", "must not be negative")
		}
		out.RunAsUser = &cri.Int64Value{Value: *sc.RunAsUser}
	}
	if sc.RunAsGroup != nil {
		if *sc.RunAsGroup < 0 {
			return nil, bad("runAsGroup", "must not be negative")
		}
		if sc.RunAsUser == nil {
			return nil, bad("runAsGroup", "needs runAsUser (the runtime cannot take the image's user with another group)")
		}
		out.RunAsGroup = &cri.Int64Value{Value: *sc.RunAsGroup}
	}
	if sc.RunAsNonRoot != nil && *sc.RunAsNonRoot && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		return nil, bad("runAsNonRoot", "is true while runAsUser is 0")
	}
	if sc.ReadOnlyRootFilesystem != nil {
		out.ReadonlyRootfs = *sc.ReadOnlyRootFilesystem
	}
	if o := sc.SELinuxOptions; o != nil {
		out.SelinuxOptions = &cri.SELinuxOption{User: o.User, Role: o.Role, Type: o.Type, Level: o.Level}
	}
	if p := sc.SeccompProfile; p != nil {
		switch p.Type {
		case corev1.SeccompProfileTypeRuntimeDefault:
			out.Seccomp = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_RuntimeDefault}
		case corev1.SeccompProfileTypeUnconfined:
			out.Seccomp = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_Unconfined}
		default:
			return nil, bad("seccompProfile.type", fmt.Sprintf("%q is not supported (RuntimeDefault and Unconfined are: a Localhost profile lives in the kubelet's directory, which the executor does not know)", p.Type))
		}
	}
	if p := sc.AppArmorProfile; p != nil {
		switch p.Type {
		case corev1.AppArmorProfileTypeRuntimeDefault:
			out.Apparmor = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_RuntimeDefault}
			out.ApparmorProfile = "runtime/default"
		case corev1.AppArmorProfileTypeUnconfined:
			out.Apparmor = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_Unconfined}
			out.ApparmorProfile = "unconfined"
		case corev1.AppArmorProfileTypeLocalhost:
			if p.LocalhostProfile == nil || *p.LocalhostProfile == "" {
				return nil, bad("appArmorProfile.localhostProfile", "is required for a Localhost profile")
			}
			out.Apparmor = &cri.SecurityProfile{ProfileType: cri.SecurityProfile_Localhost, LocalhostRef: *p.LocalhostProfile}
			out.ApparmorProfile = "localhost/" + *p.LocalhostProfile
		default:
			return nil, bad("appArmorProfile.type", fmt.Sprintf("%q is not an AppArmor profile type", p.Type))
		}
	}
	return out, nil
}

// runsAsRoot reports whether a container whose securityContext sets no
// user runs as root with image's user (as the kubelet checks runAsNonRoot
// against the image: a numeric user, or a name it cannot check).
func runsAsRoot(img *cri.Image) (root bool, unknown bool) {
	if img == nil {
		return false, true
	}
	if img.Uid != nil {
		return img.Uid.Value == 0, false
	}
	switch img.Username {
	case "", "root":
		return true, false
	}
	return false, true
}

// checkNonRoot refuses, as the kubelet does, a container that must not run
// as root (runAsNonRoot) and sets no user, when its image's user is root
// or cannot be checked.
func (d *Driver) checkNonRoot(ctx context.Context, c *corev1.Container, imageRef string) error {
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser != nil {
		return nil
	}
	resp, err := d.cri.img.ImageStatus(ctx, &cri.ImageStatusRequest{Image: &cri.ImageSpec{Image: imageRef}})
	if err != nil {
		return fmt.Errorf("while checking runAsNonRoot against image %q: %w", c.Image, err)
	}
	root, unknown := runsAsRoot(resp.Image)
	switch {
	case root:
		return fmt.Errorf("container has runAsNonRoot and image %q will run as root", c.Image)
	case unknown:
		return fmt.Errorf("container has runAsNonRoot and image %q has a non-numeric user (%s): cannot verify that it is not root", c.Image, resp.GetImage().GetUsername())
	}
	return nil
}
