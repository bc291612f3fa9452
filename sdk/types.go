package sdk

import (
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kind names a kind of task spec. A runtime declares the kinds it runs.
type Kind string

const (
	// KindProcess is a spec with Process set.
	KindProcess Kind = "process"
	// KindContainer is a spec with Container set.
	KindContainer Kind = "container"
)

// Reasons a task's state carries. They follow Kubernetes' container reasons
// where one exists.
const (
	// ReasonInitialized: the host has accepted the task and not yet handed it
	// to its runtime.
	ReasonInitialized = "Initialized"
	// ReasonQueued: the task waits for a free slot (--max-concurrent-tasks).
	ReasonQueued = "Queued"
	// ReasonSucceeded: the task exited with code 0.
	ReasonSucceeded = "Succeeded"
	// ReasonFailed: the task exited with a non-zero code or was killed by a
	// signal.
	ReasonFailed = "Failed"
	// ReasonTaskTimeout: the task ran past its timeoutSeconds and was stopped.
	ReasonTaskTimeout = "TaskTimeout"
	// ReasonStartError: the runtime could not start the task (binary not
	// found, not executable, bad working directory, ...).
	ReasonStartError = "StartError"
	// ReasonOOMKilled: the kernel killed the task for lack of memory in its
	// cgroup (a container's, or the main container's in sidecar mode).
	ReasonOOMKilled = "OOMKilled"
	// ReasonStatusUnknown: the task's end could not be observed, for example
	// because its shim was killed. Kubernetes uses the same reason.
	ReasonStatusUnknown = "ContainerStatusUnknown"
)

// TaskSpec says what to run. Exactly one of Process and Container is set.
// Its JSON is the "spec" object of the HTTP API.
type TaskSpec struct {
	// Runtime names the runtime plugin explicitly. Empty means the host's
	// default for the spec's kind.
	Runtime string `json:"runtime,omitempty"`
	// RuntimeOptions configure the runtime for this task (for example
	// whether a sandboxing runtime gives it a network). Their meaning is
	// the runtime's: only a runtime whose Info says it takes options gets
	// a spec with some (the host refuses it for others), and its Validate
	// refuses the options it does not know. They are stored with the task
	// and never reach its environment. Keys are qualified names, as
	// Kubernetes label keys are ("network", "example.com/profile").
	RuntimeOptions map[string]string `json:"runtimeOptions,omitempty"`
	// Process runs a command as a process.
	Process *ProcessSpec `json:"process,omitempty"`
	// Container runs a container image.
	Container *corev1.Container `json:"container,omitempty"`
	// Volumes can be mounted by Container through its volumeMounts.
	Volumes []corev1.Volume `json:"volumes,omitempty"`
	// TimeoutSeconds, when set, stops a container task once it has run that
	// long, as ProcessSpec.TimeoutSeconds does for a process (a
	// corev1.Container has no such field). Process tasks set theirs in
	// Process instead.
	TimeoutSeconds *int64 `json:"timeoutSeconds,omitempty"`
}

// Kind returns the kind of the spec, or "" when neither or both of Process
// and Container are set.
func (s TaskSpec) Kind() Kind {
	switch {
	case s.Process != nil && s.Container == nil:
		return KindProcess
	case s.Container != nil && s.Process == nil:
		return KindContainer
	}
	return ""
}

// ProcessSpec is a command to run as a process.
type ProcessSpec struct {
	// Command is the executable and its first arguments; Command[0] is looked
	// up in PATH when it holds no slash.
	Command []string `json:"command"`
	// Args are appended to Command.
	Args []string `json:"args,omitempty"`
	// Env is set on top of the runtime's base environment.
	Env []corev1.EnvVar `json:"env,omitempty"`
	// WorkingDir is the absolute directory to start in; empty means the
	// runtime's default.
	WorkingDir string `json:"workingDir,omitempty"`
	// TimeoutSeconds, when set, stops the task (TERM, grace period, KILL)
	// once it has run that long; it then terminates with ReasonTaskTimeout.
	TimeoutSeconds *int64 `json:"timeoutSeconds,omitempty"`
	// Resources are the task's CPU and memory requests and limits, in
	// Kubernetes' shape and with the kubelet's meaning (see
	// ValidateResources).
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
}

// Argv returns Command followed by Args.
func (p ProcessSpec) Argv() []string {
	argv := make([]string, 0, len(p.Command)+len(p.Args))
	return append(append(argv, p.Command...), p.Args...)
}

// Task is a task as a runtime sees it.
type Task struct {
	// Name is unique among the host's tasks and a DNS-1123 subdomain.
	Name string
	// Spec is what to run.
	Spec TaskSpec
	// Dir is the task's directory. The host creates it with task.json (the
	// host's own, not to be touched). The task's output belongs in
	// stdout.log and stderr.log here, which the runtime creates (O_CREAT,
	// mode 0600) when it first writes to them: a stream with no output may
	// have no file. The runtime may keep its own files here too.
	Dir string
}

// TaskStatus is the state of one task, in Kubernetes' ContainerState shape:
// exactly one of Waiting, Running and Terminated is set.
type TaskStatus struct {
	// Name is the task's name.
	Name string
	// State is the task's state.
	State corev1.ContainerState
}

// IsTerminal reports whether the task has terminated; a terminated task
// never changes state again.
func (s TaskStatus) IsTerminal() bool { return s.State.Terminated != nil }

// Info describes a runtime plugin.
type Info struct {
	// Name is the runtime's name, used for dispatch and in spec.runtime.
	Name string
	// Version is the plugin's own version.
	Version string
	// Kinds are the spec kinds the runtime runs.
	Kinds []Kind
	// NoValidate tells the host not to call Validate: the runtime accepts
	// every spec of its kinds that passes the host's own checks. It saves a
	// round trip to the plugin on every create.
	NoValidate bool
	// RuntimeOptions says the runtime reads TaskSpec.RuntimeOptions. The
	// host refuses a spec with options for a runtime without it (so an
	// option is never silently ignored, by a runtime built before options
	// existed for one), and asks Validate of every spec with options, even
	// with NoValidate set.
	RuntimeOptions bool
	// Warnings say what the runtime found wrong in its environment when it
	// started, for operators: the host logs them and GET /runtimes shows
	// them. A runtime that can run no task at all should fail Init instead.
	Warnings []string
}

// Config is what the host tells a plugin when it starts it.
type Config struct {
	// DataDir is the host's data directory; task directories live in it.
	DataDir string
	// Settings carry host options a runtime may use (see the Setting*
	// constants); a runtime ignores the ones it does not know.
	Settings map[string]string
}

// Keys of Config.Settings that the host sets.
const (
	// SettingGracePeriod is the default stop grace period, a Go duration.
	SettingGracePeriod = "gracePeriod"
	// SettingMainContainerName is the sidecar mode's main container name.
	SettingMainContainerName = "mainContainerName"
	// SettingSidecarMorePrivileged, "true", lets the sidecar runtime run
	// tasks it cannot confine as the main container is (they may then do
	// more than main can); otherwise it refuses them.
	SettingSidecarMorePrivileged = "sidecarMorePrivileged"
	// SettingPodUID is the UID of the executor's own pod, when it runs in
	// one: the cri runtime then makes container tasks in that pod's
	// sandbox, beside the kubelet that runs the pod.
	SettingPodUID = "podUID"
	// SettingCRISocket is the path of the CRI runtime's socket.
	SettingCRISocket = "criSocket"
	// SettingMaxLogBytes caps, in bytes, what each output stream of a task
	// keeps on disk ("0": no cap); older output is dropped first.
	SettingMaxLogBytes = "maxLogBytes"
	// SettingAllowedHostPaths are the node directories under which a
	// container task may mount a hostPath volume, as a JSON array.
	SettingAllowedHostPaths = "allowedHostPaths"
	// SettingVolumes are the volumes the operator offers to every container
	// task, as a JSON object from volume name to host path.
	SettingVolumes = "volumes"
	// SettingTaskCgroups says whether process tasks get cgroups of their
	// own: "auto" (where the runtime can make them; it warns at Init where
	// it cannot, and tasks then run without limits), "required" (a runtime
	// that cannot make them fails Init) or "off".
	SettingTaskCgroups = "taskCgroups"
	// SettingCgroupParent is the cgroup under which task cgroups are made
	// (a path from each hierarchy's root); empty: the runtime's own cgroup.
	SettingCgroupParent = "cgroupParent"
	// SettingDefaultTaskCPU and SettingDefaultTaskMemory are the limits, as
	// Kubernetes quantities, of a process task that sets none (as a
	// LimitRange's default); empty: none.
	SettingDefaultTaskCPU    = "defaultTaskCPU"
	SettingDefaultTaskMemory = "defaultTaskMemory"
)

// Waiting returns a waiting state.
func Waiting(reason, message string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: message}}
}

// Running returns a running state.
func Running(startedAt time.Time) corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(startedAt)}}
}

// Terminated returns a terminated state. When reason is empty it is derived
// from exitCode: ReasonSucceeded for 0, ReasonFailed otherwise.
func Terminated(exitCode, signal int32, reason, message string, startedAt, finishedAt time.Time) corev1.ContainerState {
	if reason == "" {
		reason = ReasonFailed
		if exitCode == 0 {
			reason = ReasonSucceeded
		}
	}
	t := &corev1.ContainerStateTerminated{
		ExitCode: exitCode, Signal: signal, Reason: reason, Message: message,
		StartedAt: metav1.NewTime(startedAt), FinishedAt: metav1.NewTime(finishedAt),
	}
	if startedAt.IsZero() {
		t.StartedAt = metav1.Time{}
	}
	if finishedAt.IsZero() {
		t.FinishedAt = metav1.Time{}
	}
	return corev1.ContainerState{Terminated: t}
}
