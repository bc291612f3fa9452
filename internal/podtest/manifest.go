package podtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The executor's defaults (see the README's flags), for a manifest that
// leaves a flag out.
const (
	defaultListenAddr = "0.0.0.0:5758"
	defaultDataDir    = "/var/lib/sandbox/tasks"
	defaultMainName   = "main"
)

// What the manifest calls the executor's image: the Dockerfile's
// `docker build -t task-executor .`.
const executorImageRepo = "task-executor"

// The executor's health endpoint (see the README's HTTP API).
const healthPath = "/health"

// Kubernetes' default terminationGracePeriodSeconds.
const defaultGracePeriod = 30 * time.Second

// parseManifest decodes a manifest holding one Pod, refusing fields the
// Kubernetes API types do not have and keys given twice, as the API server
// does with strict field validation.
func parseManifest(data []byte) (*corev1.Pod, error) {
	r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("while splitting the manifest into documents: %w", err)
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
	if len(docs) != 1 {
		return nil, fmt.Errorf("the manifest holds %d documents, want one Pod", len(docs))
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(docs[0], &pod); err != nil {
		return nil, fmt.Errorf("while decoding the manifest as a Pod: %w", err)
	}
	return &pod, nil
}

// stripComments drops the YAML comment lines of doc, so a document of
// comments alone counts as empty.
func stripComments(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("---")) {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// imageUser is the user an image runs as, as the CRI's ImageStatus gives
// it: a uid, a name, or neither (root).
type imageUser struct {
	uid  *int64
	name string
}

// node is what a kubelet knows of its node and of the pod's runtime, and the
// fixture's choices for what a real node would get from elsewhere.
type node struct {
	dir           string // for emptyDirs, logs, seccomp profiles
	podUID        string // the API server's, for a manifest without one
	mainImage     string // runs the main container
	executorImage string // runs the executor's container
	imageUsers    map[string]imageUser
	listenAddr    string // the executor's, replacing the manifest's
	memory        int64  // the node's memory capacity, for OOM scores
	hugePageSizes []string
	swap          swapControl
}

// plan is what the fixture asks the runtime for: a sandbox and its
// containers in the manifest's order, and the directories to make first.
type plan struct {
	sandbox    *runtimeapi.PodSandboxConfig
	containers []*containerPlan
	emptyDirs  []emptyDir
	url        string // the executor's API, from the fixture's listen address
	dataDir    string // on the node: the executor's --data-dir
	grace      time.Duration
}

// containerPlan is one container: its CRI config at attempt 0 and what
// tells it is ready.
type containerPlan struct {
	name   string
	config *runtimeapi.ContainerConfig
	// readyPath is the path its readiness probe GETs on the executor's
	// address; "" when running is ready enough.
	readyPath string
}

// emptyDir is the node's directory for an emptyDir volume.
type emptyDir struct {
	name, path string
	fsGroup    *int64
}

// take returns *p and zeroes it. translate takes every field it reads from
// its copy of the pod, so that whatever is left set is what it did not
// understand, and fails on that rather than running a different pod.
func take[T any](p *T) T {
	v := *p
	var zero T
	*p = zero
	return v
}

// dropIfEmpty sets *p to nil once everything in the struct was taken, so
// that `{}` or a struct whose fields were all understood does not count as
// left over, while one with a field left keeps reporting it.
func dropIfEmpty[T any](p **T) {
	if *p != nil && len(setFields("", **p)) == 0 {
		*p = nil
	}
}

// translate derives, as a kubelet does, what the runtime is asked for to
// run pod on node n, with the tests' deviations o. pod is left as it is.
func translate(pod *corev1.Pod, n node, o options) (*plan, error) {
	pod = pod.DeepCopy()
	who, err := applyOptions(pod, n.listenAddr, o)
	if err != nil {
		return nil, err
	}
	p := &plan{url: "http://" + n.listenAddr}

	if v := take(&pod.APIVersion); v != "v1" {
		return nil, fmt.Errorf("apiVersion %q, want v1", v)
	}
	if k := take(&pod.Kind); k != "Pod" {
		return nil, fmt.Errorf("kind %q, want Pod", k)
	}
	meta := podMeta{name: take(&pod.Name), namespace: take(&pod.Namespace), uid: string(take(&pod.UID))}
	if meta.name == "" {
		return nil, errors.New("metadata.name is missing")
	}
	if meta.namespace == "" {
		meta.namespace = "default"
	}
	if meta.uid == "" {
		meta.uid = n.podUID
	}
	labels := take(&pod.Labels)
	annotations := take(&pod.Annotations)
	for k := range annotations {
		// Annotations under kubernetes.io (AppArmor, seccomp, ...) change
		// what the kubelet asks for; the others are the user's.
		if strings.Contains(k, "kubernetes.io/") {
			return nil, fmt.Errorf("metadata.annotations[%s]: the kubelet may act on annotations under kubernetes.io, and the fixture does not", k)
		}
	}

	spec := &pod.Spec
	nsOpts, err := takeNamespaces(spec)
	if err != nil {
		return nil, err
	}
	p.grace = defaultGracePeriod
	if g := take(&spec.TerminationGracePeriodSeconds); g != nil {
		p.grace = time.Duration(*g) * time.Second
	}
	// The fixture never restarts a container on its own (RestartContainer
	// does when a test asks), so every policy runs the same.
	switch rp := take(&spec.RestartPolicy); rp {
	case "", corev1.RestartPolicyAlways, corev1.RestartPolicyOnFailure, corev1.RestartPolicyNever:
	default:
		return nil, fmt.Errorf("spec.restartPolicy %q is not a restart policy", rp)
	}
	// On the node's network DNS is the node's, as for Default.
	switch dp := spec.DNSPolicy; dp {
	case "", corev1.DNSClusterFirst, corev1.DNSClusterFirstWithHostNet, corev1.DNSDefault:
		spec.DNSPolicy = ""
	}
	// Without an API server there are no Services to link nor tokens to
	// mount: these change nothing here.
	take(&spec.EnableServiceLinks)
	take(&spec.AutomountServiceAccountToken)
	take(&spec.ServiceAccountName)
	if spec.OS != nil && spec.OS.Name == corev1.Linux {
		take(&spec.OS.Name)
		dropIfEmpty(&spec.OS)
	}
	if spec.HostUsers != nil && *spec.HostUsers {
		spec.HostUsers = nil
	}

	ps, err := takePodSecurity(spec)
	if err != nil {
		return nil, err
	}

	vols := map[string]emptyDir{}
	for i := range spec.Volumes {
		v := &spec.Volumes[i]
		name := take(&v.Name)
		if v.EmptyDir == nil {
			return nil, fmt.Errorf("spec.volumes[%d] (%s): only emptyDir volumes can run here", i, name)
		}
		if _, dup := vols[name]; dup {
			return nil, fmt.Errorf("spec.volumes[%d]: a second volume named %q", i, name)
		}
		if v.EmptyDir.Medium == corev1.StorageMediumDefault {
			dropIfEmpty(&v.EmptyDir)
		}
		// Where the kubelet puts it, under the fixture's directory: the
		// same directory for every attempt of a container, as an emptyDir
		// outlives the restarts of the containers that mount it.
		d := emptyDir{name: name, path: filepath.Join(n.dir, "pods", meta.uid, "volumes", "kubernetes.io~empty-dir", name), fsGroup: ps.fsGroup}
		vols[name] = d
		p.emptyDirs = append(p.emptyDirs, d)
	}

	if len(spec.InitContainers) > 0 || len(spec.EphemeralContainers) > 0 {
		return nil, errors.New("init and ephemeral containers are not supported")
	}
	res := make([]resources, len(spec.Containers))
	for i := range spec.Containers {
		if res[i], err = takeResources(&spec.Containers[i].Resources); err != nil {
			return nil, fmt.Errorf("spec.containers[%d] (%s): %w", i, spec.Containers[i].Name, err)
		}
	}
	qos := podQOS(res)

	privileged := false
	seen := map[string]bool{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		if seen[c.Name] {
			return nil, fmt.Errorf("spec.containers[%d]: a second container named %q", i, c.Name)
		}
		seen[c.Name] = true
		name := c.Name // translateContainer takes it
		image := imageFor(i, c, who, n)
		if image == "" {
			return nil, fmt.Errorf("spec.containers[%d] (%s): no image for it here: only the executor's container and its main container can run", i, name)
		}
		cp, err := translateContainer(c, containerEnv{
			pod: meta, node: n, ns: nsOpts, sec: ps, vols: vols, res: res[i], qos: qos,
			image: image, executor: i == who.executor,
			listenPort: who.listenPort, grace: p.grace,
		})
		if err != nil {
			return nil, fmt.Errorf("spec.containers[%d] (%s): %w", i, name, err)
		}
		if cp.config.Linux.SecurityContext.Privileged {
			privileged = true
		}
		p.containers = append(p.containers, cp)
	}

	if left := setFields("", *pod); len(left) > 0 {
		return nil, fmt.Errorf("fields the fixture cannot run as a kubelet would (fix the fixture or the manifest): %s", strings.Join(left, ", "))
	}

	p.dataDir, err = dataDirOnNode(p.containers[who.executor].config, vols)
	if err != nil {
		return nil, err
	}

	podLabels := map[string]string{}
	for k, v := range labels {
		podLabels[k] = v
	}
	for k, v := range meta.labels() {
		podLabels[k] = v
	}
	p.sandbox = &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: meta.name, Uid: meta.uid, Namespace: meta.namespace},
		// The kubelet's /var/log/pods/<namespace>_<name>_<uid>.
		LogDirectory: filepath.Join(n.dir, "logs", meta.namespace+"_"+meta.name+"_"+meta.uid),
		Labels:       podLabels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions:   cloneNS(nsOpts),
				SelinuxOptions:     ps.seLinux,
				RunAsUser:          int64Value(ps.runAsUser),
				RunAsGroup:         int64Value(ps.runAsGroup),
				SupplementalGroups: ps.groups,
				// containerd refuses a privileged container in a sandbox
				// that is not.
				Privileged: privileged,
				Seccomp:    seccompProfile(nil, ps.seccomp, filepath.Join(n.dir, "seccomp")),
			},
		},
	}
	return p, nil
}

// podMeta is the pod's identity as the kubelet labels things with it.
type podMeta struct{ name, namespace, uid string }

// field resolves a downward-API field reference of the pod's metadata, as
// the kubelet does; false for any other source.
func (m podMeta) field(src *corev1.EnvVarSource) (string, bool) {
	if src.FieldRef == nil || src.ResourceFieldRef != nil || src.ConfigMapKeyRef != nil || src.SecretKeyRef != nil ||
		(src.FieldRef.APIVersion != "" && src.FieldRef.APIVersion != "v1") {
		return "", false
	}
	v, ok := map[string]string{"metadata.name": m.name, "metadata.namespace": m.namespace, "metadata.uid": m.uid}[src.FieldRef.FieldPath]
	return v, ok
}

func (m podMeta) labels() map[string]string {
	return map[string]string{
		"io.kubernetes.pod.name":      m.name,
		"io.kubernetes.pod.namespace": m.namespace,
		"io.kubernetes.pod.uid":       m.uid,
	}
}

// takeNamespaces returns the namespaces the pod's containers share. The
// network is always the node's: there is no CNI here to give a pod one of
// its own (and so, with containerd, the UTS namespace is the node's too).
func takeNamespaces(spec *corev1.PodSpec) (*runtimeapi.NamespaceOption, error) {
	ns := &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_NODE,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
	take(&spec.HostNetwork)
	share := take(&spec.ShareProcessNamespace)
	hostPID := take(&spec.HostPID)
	if share != nil && *share {
		if hostPID {
			return nil, errors.New("spec.shareProcessNamespace and spec.hostPID are exclusive")
		}
		ns.Pid = runtimeapi.NamespaceMode_POD
	}
	if hostPID {
		ns.Pid = runtimeapi.NamespaceMode_NODE
	}
	if take(&spec.HostIPC) {
		ns.Ipc = runtimeapi.NamespaceMode_NODE
	}
	return ns, nil
}

func cloneNS(ns *runtimeapi.NamespaceOption) *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{Network: ns.Network, Pid: ns.Pid, Ipc: ns.Ipc}
}

// containerEnv is what translating one container needs of the pod.
type containerEnv struct {
	pod        podMeta
	node       node
	ns         *runtimeapi.NamespaceOption
	sec        podSecurity
	vols       map[string]emptyDir
	res        resources
	qos        corev1.PodQOSClass
	image      string
	executor   bool
	listenPort int32 // the executor's in the manifest
	grace      time.Duration
}

// translateContainer is the kubelet's generateContainerConfig for attempt
// 0, taking from c what it reads.
func translateContainer(c *corev1.Container, e containerEnv) (*containerPlan, error) {
	name := take(&c.Name)
	take(&c.Image) // replaced: see imageFor
	// Images are local here; no policy pulls.
	take(&c.ImagePullPolicy)
	// The fixture writes no termination message.
	take(&c.TerminationMessagePath)
	take(&c.TerminationMessagePolicy)

	cfg := &runtimeapi.ContainerConfig{
		Metadata:   &runtimeapi.ContainerMetadata{Name: name},
		Image:      &runtimeapi.ImageSpec{Image: e.image},
		Command:    take(&c.Command),
		Args:       take(&c.Args),
		WorkingDir: take(&c.WorkingDir),
		Stdin:      take(&c.Stdin),
		StdinOnce:  take(&c.StdinOnce),
		Tty:        take(&c.TTY),
		Labels: map[string]string{
			"io.kubernetes.container.name": name,
		},
		Annotations: map[string]string{
			"io.kubernetes.container.restartCount":     "0",
			"io.kubernetes.pod.terminationGracePeriod": strconv.FormatInt(int64(e.grace/time.Second), 10),
		},
		// The kubelet's <container>/<restart count>.log under the pod's
		// log directory.
		LogPath: filepath.Join(name, "0.log"),
	}
	for k, v := range e.pod.labels() {
		cfg.Labels[k] = v
	}
	// The kubelet expands $(VAR) and $$ in these; the fixture does not.
	for _, s := range slices.Concat(cfg.Command, cfg.Args) {
		if hasExpansion(s) {
			return nil, fmt.Errorf("command or args %q: $(VAR) expansion is not supported", s)
		}
	}

	env := map[string]int{}
	for i := range c.Env {
		v := &c.Env[i]
		var val string
		if v.ValueFrom != nil {
			from, ok := e.pod.field(v.ValueFrom)
			if !ok {
				continue // a leftover: a source the fixture cannot give
			}
			val = from
			take(&v.ValueFrom.FieldRef.FieldPath)
			take(&v.ValueFrom.FieldRef.APIVersion)
			v.ValueFrom.FieldRef = nil
			v.ValueFrom = nil
		}
		k := take(&v.Name)
		if v := take(&v.Value); v != "" {
			val = v
		}
		if hasExpansion(val) {
			return nil, fmt.Errorf("env %s=%q: $(VAR) expansion is not supported", k, val)
		}
		// A name given twice: the last value wins, as in Kubernetes.
		if j, ok := env[k]; ok {
			cfg.Envs[j].Value = []byte(val)
			continue
		}
		env[k] = len(cfg.Envs)
		cfg.Envs = append(cfg.Envs, &runtimeapi.KeyValue{Key: k, Value: []byte(val)})
	}

	ports := map[string]int32{}
	for i := range c.Ports {
		pt := &c.Ports[i]
		// Only CNI uses ports, and there is none: on the node's network a
		// port is just where the process listens.
		if pn := take(&pt.Name); pn != "" {
			ports[pn] = pt.ContainerPort
		}
		take(&pt.ContainerPort)
		switch pt.Protocol {
		case "", corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP:
			take(&pt.Protocol)
		}
	}

	for i := range c.VolumeMounts {
		m := &c.VolumeMounts[i]
		vol, dest := take(&m.Name), take(&m.MountPath)
		d, ok := e.vols[vol]
		if !ok {
			return nil, fmt.Errorf("volumeMounts[%d]: the pod has no volume %q", i, vol)
		}
		mount := &runtimeapi.Mount{ContainerPath: dest, HostPath: d.path, Readonly: take(&m.ReadOnly)}
		if mp := m.MountPropagation; mp != nil {
			switch *mp {
			case corev1.MountPropagationNone:
				mount.Propagation = runtimeapi.MountPropagation_PROPAGATION_PRIVATE
			case corev1.MountPropagationHostToContainer:
				mount.Propagation = runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
			case corev1.MountPropagationBidirectional:
				mount.Propagation = runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
			default:
				return nil, fmt.Errorf("volumeMounts[%d]: unknown mountPropagation %q", i, *mp)
			}
			m.MountPropagation = nil
		}
		if rro := m.RecursiveReadOnly; rro != nil && *rro == corev1.RecursiveReadOnlyDisabled {
			m.RecursiveReadOnly = nil
		}
		cfg.Mounts = append(cfg.Mounts, mount)
	}

	var readyPath string
	if pr := c.ReadinessProbe; pr != nil && pr.HTTPGet != nil {
		var err error
		if readyPath, err = takeReadiness(c, ports, e); err != nil {
			return nil, err
		}
	} else if e.executor {
		// Without a probe a kubelet counts the executor ready once it runs;
		// Start promises tests an executor that answers.
		readyPath = healthPath
	}

	sc, err := securityContext(c, e)
	if err != nil {
		return nil, err
	}
	for _, m := range cfg.Mounts {
		// As the API server validates it.
		if m.Propagation == runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL && !sc.Privileged {
			return nil, fmt.Errorf("mount %s: mountPropagation Bidirectional needs a privileged container", m.ContainerPath)
		}
	}
	cfg.Linux = &runtimeapi.LinuxContainerConfig{
		Resources:       linuxResources(e.res, e.qos, e.node),
		SecurityContext: sc,
	}
	return &containerPlan{name: cfg.Metadata.Name, config: cfg, readyPath: readyPath}, nil
}

// takeReadiness checks an HTTP readiness probe the fixture can honour (on
// the executor's API, which it moves to its own address) and returns the
// path it GETs. The probe's timings are taken but not kept: the fixture
// polls faster, within the test's deadline.
func takeReadiness(c *corev1.Container, ports map[string]int32, e containerEnv) (string, error) {
	pr := c.ReadinessProbe
	h := pr.HTTPGet
	var port int32
	switch pv := take(&h.Port); pv.Type {
	case intstr.Int:
		port = pv.IntVal
	case intstr.String:
		n, ok := ports[pv.StrVal]
		if !ok {
			return "", fmt.Errorf("readinessProbe: no container port named %q", pv.StrVal)
		}
		port = n
	}
	if !e.executor || port != e.listenPort {
		return "", fmt.Errorf("readinessProbe: port %d is not the executor's --listen-addr port (%d), the one address the fixture knows", port, e.listenPort)
	}
	path := take(&h.Path)
	if path == "" {
		path = "/"
	}
	if h.Scheme == "" || h.Scheme == corev1.URISchemeHTTP {
		take(&h.Scheme)
	}
	dropIfEmpty(&pr.HTTPGet)
	take(&pr.InitialDelaySeconds)
	take(&pr.TimeoutSeconds)
	take(&pr.PeriodSeconds)
	take(&pr.SuccessThreshold)
	take(&pr.FailureThreshold)
	dropIfEmpty(&c.ReadinessProbe)
	return path, nil
}

func hasExpansion(s string) bool { return strings.Contains(s, "$(") || strings.Contains(s, "$$") }

// roles are the pod's containers as the executor sees them.
type roles struct {
	executor   int    // index of the executor's container
	mainName   string // its --main-container-name
	listenPort int32  // its --listen-addr port in the manifest
}

// applyOptions finds the executor's and the main container and applies the
// tests' deviations to them, before anything is translated, so that what
// the options set is held to the same checks as the manifest.
func applyOptions(pod *corev1.Pod, listenAddr string, o options) (roles, error) {
	var r roles
	r.executor = -1
	for i, c := range pod.Spec.Containers {
		if isExecutorImage(c.Image) {
			if r.executor >= 0 {
				return r, fmt.Errorf("containers %s and %s both run the executor's image", pod.Spec.Containers[r.executor].Name, c.Name)
			}
			r.executor = i
		}
	}
	if r.executor < 0 {
		return r, fmt.Errorf("no container runs the executor's image (%s:<tag>)", executorImageRepo)
	}
	exec := &pod.Spec.Containers[r.executor]
	if exec.Name != ExecutorContainer {
		return r, fmt.Errorf("the executor's container is %q; the fixture's ExecutorContainer says %q", exec.Name, ExecutorContainer)
	}
	if _, ok := flagValue(o.executorArgs, "listen-addr"); ok {
		return r, errors.New("WithExecutorArgs: the fixture sets --listen-addr itself")
	}
	exec.Args = append(exec.Args, o.executorArgs...)
	exec.Env = append(exec.Env, o.executorEnv...)

	manifestAddr, ok := flagValue(exec.Args, "listen-addr")
	if !ok {
		manifestAddr = defaultListenAddr
	}
	_, port, err := net.SplitHostPort(manifestAddr)
	if err != nil {
		return r, fmt.Errorf("the executor's --listen-addr %q: %w", manifestAddr, err)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return r, fmt.Errorf("the executor's --listen-addr %q: port: %w", manifestAddr, err)
	}
	r.listenPort = int32(pn)
	exec.Args = setFlag(exec.Args, "listen-addr", listenAddr)

	r.mainName = defaultMainName
	if v, ok := flagValue(exec.Args, "main-container-name"); ok {
		r.mainName = v
	}
	if r.mainName != MainContainer {
		return r, fmt.Errorf("the executor's main container is %q; the fixture's MainContainer says %q", r.mainName, MainContainer)
	}
	var main *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == r.mainName {
			main = &pod.Spec.Containers[i]
		}
	}
	if main == nil {
		return r, fmt.Errorf("the executor's main container %q is not in the pod", r.mainName)
	}
	if o.mainSecuritySet {
		main.SecurityContext = o.mainSecurity.DeepCopy()
	}
	if o.execSeccomp != nil {
		if exec.SecurityContext == nil {
			exec.SecurityContext = &corev1.SecurityContext{}
		}
		exec.SecurityContext.SeccompProfile = o.execSeccomp.DeepCopy()
	}
	if o.mainMemory != nil {
		if main.Resources.Limits == nil {
			main.Resources.Limits = corev1.ResourceList{}
		}
		main.Resources.Limits[corev1.ResourceMemory] = *resource.NewQuantity(*o.mainMemory, resource.BinarySI)
		// A request above the new limit would be invalid; the defaulting
		// makes it the limit.
		delete(main.Resources.Requests, corev1.ResourceMemory)
	}
	if o.mainCommand != nil {
		main.Command = slices.Clone(o.mainCommand)
		main.Args = nil
	}
	return r, nil
}

func isExecutorImage(image string) bool {
	return image == executorImageRepo || strings.HasPrefix(image, executorImageRepo+":")
}

// imageFor is the image container i runs here: nothing can be pulled, so
// main runs busybox and the executor the image built from this tree.
func imageFor(i int, c *corev1.Container, r roles, n node) string {
	switch {
	case i == r.executor:
		return n.executorImage
	case c.Name == r.mainName:
		return n.mainImage
	}
	return ""
}

// flagValue returns the last value of a string flag in args, as Go's flag
// package reads it: -name=v, --name=v, -name v or --name v.
func flagValue(args []string, name string) (string, bool) {
	var v string
	found := false
	for i := 0; i < len(args); i++ {
		a := strings.TrimPrefix(strings.TrimPrefix(args[i], "-"), "-")
		if a == args[i] {
			continue
		}
		if a == name && i+1 < len(args) {
			v, found = args[i+1], true
			i++
		} else if rest, ok := strings.CutPrefix(a, name+"="); ok {
			v, found = rest, true
		}
	}
	return v, found
}

// setFlag gives every occurrence of a string flag in args the value v, and
// adds one if there is none.
func setFlag(args []string, name, v string) []string {
	out := slices.Clone(args)
	found := false
	for i := 0; i < len(out); i++ {
		a := strings.TrimPrefix(strings.TrimPrefix(out[i], "-"), "-")
		if a == out[i] {
			continue
		}
		if a == name && i+1 < len(out) {
			out[i+1] = v
			found = true
			i++
		} else if strings.HasPrefix(a, name+"=") {
			out[i] = "--" + name + "=" + v
			found = true
		}
	}
	if !found {
		out = append(out, "--"+name+"="+v)
	}
	return out
}

// dataDirOnNode is the node's directory behind the executor's --data-dir:
// it must be on an emptyDir, or it would not outlive a restart of the
// container.
func dataDirOnNode(cfg *runtimeapi.ContainerConfig, vols map[string]emptyDir) (string, error) {
	dir, ok := flagValue(cfg.Args, "data-dir")
	if !ok {
		dir = defaultDataDir
	}
	dir = filepath.Clean(dir)
	var best *runtimeapi.Mount
	for _, m := range cfg.Mounts {
		dest := filepath.Clean(m.ContainerPath)
		if (dir == dest || strings.HasPrefix(dir, dest+"/")) && (best == nil || len(dest) > len(filepath.Clean(best.ContainerPath))) {
			best = m
		}
	}
	if best == nil {
		return "", fmt.Errorf("the executor's --data-dir %s is on no emptyDir volume", dir)
	}
	rel, err := filepath.Rel(filepath.Clean(best.ContainerPath), dir)
	if err != nil {
		return "", fmt.Errorf("while placing --data-dir %s on its volume: %w", dir, err)
	}
	return filepath.Join(best.HostPath, rel), nil
}
