package podtest

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The paths the kubelet masks or makes read-only in /proc and /sys unless
// procMount is Unmasked (pkg/securitycontext). It passes them explicitly,
// so they are part of what a container is asked for.
var (
	kubeletMaskedPaths = []string{
		"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/sys/firmware", "/sys/devices/virtual/powercap",
	}
	kubeletReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

// podSecurity is the pod's securityContext: defaults for its containers,
// and the groups every container gets.
type podSecurity struct {
	runAsUser, runAsGroup *int64
	runAsNonRoot          *bool
	seLinux               *runtimeapi.SELinuxOption
	seccomp               *corev1.SeccompProfile
	appArmor              *corev1.AppArmorProfile
	fsGroup               *int64
	groups                []int64 // fsGroup, then supplementalGroups, as the kubelet orders them
}

func takePodSecurity(spec *corev1.PodSpec) (podSecurity, error) {
	var ps podSecurity
	sc := spec.SecurityContext
	if sc == nil {
		return ps, nil
	}
	ps.runAsUser = take(&sc.RunAsUser)
	ps.runAsGroup = take(&sc.RunAsGroup)
	ps.runAsNonRoot = take(&sc.RunAsNonRoot)
	ps.seLinux = takeSELinux(&sc.SELinuxOptions)
	var err error
	if ps.seccomp, err = takeSeccomp(&sc.SeccompProfile); err != nil {
		return ps, fmt.Errorf("spec.securityContext: %w", err)
	}
	if ps.appArmor, err = takeAppArmor(&sc.AppArmorProfile); err != nil {
		return ps, fmt.Errorf("spec.securityContext: %w", err)
	}
	ps.fsGroup = take(&sc.FSGroup)
	if ps.fsGroup != nil {
		ps.groups = append(ps.groups, *ps.fsGroup)
	}
	ps.groups = append(ps.groups, take(&sc.SupplementalGroups)...)
	// Merge is the default; Strict needs a newer containerd than 1.6.
	if sc.SupplementalGroupsPolicy != nil && *sc.SupplementalGroupsPolicy == corev1.SupplementalGroupsPolicyMerge {
		sc.SupplementalGroupsPolicy = nil
	}
	// Both policies chown a fresh emptyDir alike.
	take(&sc.FSGroupChangePolicy)
	dropIfEmpty(&spec.SecurityContext)
	return ps, nil
}

func takeSELinux(p **corev1.SELinuxOptions) *runtimeapi.SELinuxOption {
	o := *p
	if o == nil {
		return nil
	}
	out := &runtimeapi.SELinuxOption{User: take(&o.User), Role: take(&o.Role), Type: take(&o.Type), Level: take(&o.Level)}
	dropIfEmpty(p)
	return out
}

// takeSeccomp returns a copy of the profile, having checked it is one the
// API server accepts.
func takeSeccomp(p **corev1.SeccompProfile) (*corev1.SeccompProfile, error) {
	s := *p
	if s == nil {
		return nil, nil
	}
	out := &corev1.SeccompProfile{Type: take(&s.Type), LocalhostProfile: take(&s.LocalhostProfile)}
	dropIfEmpty(p)
	switch out.Type {
	case corev1.SeccompProfileTypeRuntimeDefault, corev1.SeccompProfileTypeUnconfined:
		if out.LocalhostProfile != nil {
			return nil, fmt.Errorf("seccompProfile: localhostProfile is only for type Localhost")
		}
	case corev1.SeccompProfileTypeLocalhost:
		if out.LocalhostProfile == nil || *out.LocalhostProfile == "" {
			return nil, errors.New("seccompProfile: type Localhost needs localhostProfile")
		}
		if filepath.IsAbs(*out.LocalhostProfile) || slices.Contains(strings.Split(*out.LocalhostProfile, "/"), "..") {
			return nil, fmt.Errorf("seccompProfile: localhostProfile %q must be a relative path without ..", *out.LocalhostProfile)
		}
	default:
		return nil, fmt.Errorf("seccompProfile: unknown type %q", out.Type)
	}
	return out, nil
}

func takeAppArmor(p **corev1.AppArmorProfile) (*corev1.AppArmorProfile, error) {
	a := *p
	if a == nil {
		return nil, nil
	}
	out := &corev1.AppArmorProfile{Type: take(&a.Type), LocalhostProfile: take(&a.LocalhostProfile)}
	dropIfEmpty(p)
	switch out.Type {
	case corev1.AppArmorProfileTypeRuntimeDefault, corev1.AppArmorProfileTypeUnconfined:
		if out.LocalhostProfile != nil {
			return nil, errors.New("appArmorProfile: localhostProfile is only for type Localhost")
		}
	case corev1.AppArmorProfileTypeLocalhost:
		if out.LocalhostProfile == nil || *out.LocalhostProfile == "" {
			return nil, errors.New("appArmorProfile: type Localhost needs localhostProfile")
		}
	default:
		return nil, fmt.Errorf("appArmorProfile: unknown type %q", out.Type)
	}
	return out, nil
}

// seccompProfile is the kubelet's choice of seccomp profile: the
// container's, else the pod's, else Unconfined (the kubelet's default while
// its seccompDefault setting is off, as it is by default). Localhost
// profiles are files under root, the kubelet's <root-dir>/seccomp.
func seccompProfile(container, pod *corev1.SeccompProfile, root string) *runtimeapi.SecurityProfile {
	s := container
	if s == nil {
		s = pod
	}
	if s == nil {
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	}
	switch s.Type {
	case corev1.SeccompProfileTypeRuntimeDefault:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	case corev1.SeccompProfileTypeLocalhost:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: filepath.Join(root, *s.LocalhostProfile)}
	default:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	}
}

// appArmorProfile is the kubelet's: the container's profile, else the
// pod's, else none (the runtime's default), in the CRI's field and in the
// deprecated string older runtimes such as containerd 1.6 may read.
func appArmorProfile(container, pod *corev1.AppArmorProfile) (*runtimeapi.SecurityProfile, string) {
	a := container
	if a == nil {
		a = pod
	}
	switch {
	case a == nil:
		return nil, ""
	case a.Type == corev1.AppArmorProfileTypeRuntimeDefault:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}, corev1.DeprecatedAppArmorBetaProfileRuntimeDefault
	case a.Type == corev1.AppArmorProfileTypeLocalhost:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: *a.LocalhostProfile},
			corev1.DeprecatedAppArmorBetaProfileNamePrefix + *a.LocalhostProfile
	default:
		return &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}, corev1.DeprecatedAppArmorBetaProfileNameUnconfined
	}
}

// securityContext is the kubelet's determineEffectiveSecurityContext: the
// container's settings over the pod's defaults, checked as the API server
// and the kubelet check them.
func securityContext(c *corev1.Container, e containerEnv) (*runtimeapi.LinuxContainerSecurityContext, error) {
	var (
		capAdd, capDrop       []string
		haveCaps              bool
		privileged, readOnly  *bool
		allowEscalation       *bool
		runAsUser, runAsGroup *int64
		runAsNonRoot          *bool
		seLinux               *runtimeapi.SELinuxOption
		seccomp               *corev1.SeccompProfile
		appArmor              *corev1.AppArmorProfile
		err                   error
	)
	if sc := c.SecurityContext; sc != nil {
		if caps := sc.Capabilities; caps != nil {
			haveCaps = true
			for _, cp := range take(&caps.Add) {
				capAdd = append(capAdd, string(cp))
			}
			for _, cp := range take(&caps.Drop) {
				capDrop = append(capDrop, string(cp))
			}
			dropIfEmpty(&sc.Capabilities)
		}
		privileged = take(&sc.Privileged)
		readOnly = take(&sc.ReadOnlyRootFilesystem)
		allowEscalation = take(&sc.AllowPrivilegeEscalation)
		runAsUser = take(&sc.RunAsUser)
		runAsGroup = take(&sc.RunAsGroup)
		runAsNonRoot = take(&sc.RunAsNonRoot)
		seLinux = takeSELinux(&sc.SELinuxOptions)
		if sc.ProcMount != nil && *sc.ProcMount == corev1.DefaultProcMount {
			sc.ProcMount = nil
		}
		if seccomp, err = takeSeccomp(&sc.SeccompProfile); err != nil {
			return nil, fmt.Errorf("securityContext: %w", err)
		}
		if appArmor, err = takeAppArmor(&sc.AppArmorProfile); err != nil {
			return nil, fmt.Errorf("securityContext: %w", err)
		}
		dropIfEmpty(&c.SecurityContext)
	}
	// The pod's settings are defaults; the container's win.
	if runAsUser == nil {
		runAsUser = e.sec.runAsUser
	}
	if runAsGroup == nil {
		runAsGroup = e.sec.runAsGroup
	}
	if runAsNonRoot == nil {
		runAsNonRoot = e.sec.runAsNonRoot
	}
	if seLinux == nil {
		seLinux = e.sec.seLinux
	}

	isPrivileged := privileged != nil && *privileged
	noNewPrivs := allowEscalation != nil && !*allowEscalation
	if noNewPrivs {
		if isPrivileged {
			return nil, errors.New("securityContext: allowPrivilegeEscalation: false contradicts privileged: true")
		}
		for _, cp := range capAdd {
			if strings.TrimPrefix(strings.ToUpper(cp), "CAP_") == "SYS_ADMIN" {
				return nil, errors.New("securityContext: allowPrivilegeEscalation: false contradicts adding SYS_ADMIN")
			}
		}
	}

	out := &runtimeapi.LinuxContainerSecurityContext{
		NamespaceOptions:   cloneNS(e.ns),
		SelinuxOptions:     seLinux,
		Privileged:         isPrivileged,
		ReadonlyRootfs:     readOnly != nil && *readOnly,
		NoNewPrivs:         noNewPrivs,
		SupplementalGroups: slices.Clone(e.sec.groups),
		MaskedPaths:        slices.Clone(kubeletMaskedPaths),
		ReadonlyPaths:      slices.Clone(kubeletReadonlyPaths),
		RunAsGroup:         int64Value(runAsGroup),
	}
	if haveCaps {
		out.Capabilities = &runtimeapi.Capability{AddCapabilities: capAdd, DropCapabilities: capDrop}
	}
	// Without runAsUser the kubelet passes the image's user, root for an
	// image that names none.
	user := e.node.imageUsers[e.image]
	switch {
	case runAsUser != nil:
		out.RunAsUser = &runtimeapi.Int64Value{Value: *runAsUser}
	case user.uid != nil:
		out.RunAsUser = &runtimeapi.Int64Value{Value: *user.uid}
	case user.name != "":
		out.RunAsUsername = user.name
	default:
		out.RunAsUser = &runtimeapi.Int64Value{Value: 0}
	}
	if runAsNonRoot != nil && *runAsNonRoot {
		switch {
		case out.RunAsUser != nil && out.RunAsUser.Value == 0:
			return nil, errors.New("securityContext: runAsNonRoot, and the container would run as root")
		case out.RunAsUser == nil:
			return nil, fmt.Errorf("securityContext: runAsNonRoot, and the image's user %q is not numeric, so it cannot be checked", out.RunAsUsername)
		}
	}
	out.Seccomp = seccompProfile(seccomp, e.sec.seccomp, filepath.Join(e.node.dir, "seccomp"))
	out.Apparmor, out.ApparmorProfile = appArmorProfile(appArmor, e.sec.appArmor)
	return out, nil
}

func int64Value(p *int64) *runtimeapi.Int64Value {
	if p == nil {
		return nil
	}
	return &runtimeapi.Int64Value{Value: *p}
}
