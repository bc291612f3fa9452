package sdk

// The log files of a task's directory: where a runtime leaves a task's
// output, and where the host reads it from (GET /tasks/{name}/logs). A
// runtime writes either the two plain streams (StdoutLog, StderrLog) or one
// log in the CRI format (ContainerLog), creating a file when it first
// writes to it: a missing file is served as empty. Under the host's cap
// (SettingMaxLogBytes) a runtime renames a file that reached half of it to
// its name with RotatedSuffix, replacing the previous one, and goes on in a
// new file; the host serves the rotated part first.
const (
	// StdoutLog holds a task's standard output, as the task wrote it.
	StdoutLog = "stdout.log"
	// StderrLog holds a task's standard error, as the task wrote it.
	StderrLog = "stderr.log"
	// ContainerLog holds both streams of a container task in the CRI log
	// format, the kubelet's: one "<RFC 3339 time> <stdout|stderr> <F|P>
	// <text>" line per line (P: a part of a longer one).
	ContainerLog = "container.log"
	// RotatedSuffix names the older part of a rotated file
	// (StdoutLog+RotatedSuffix, ...).
	RotatedSuffix = ".1"
)
