package nsenter

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/opensandbox/task-executor/sdk/shim"
)

// status is what /proc/<pid>/status says of a process's identity and
// confinement.
type status struct {
	uid, gid       [3]uint32
	groups         []uint32
	caps           shim.Capabilities
	noNewPrivs     bool
	umask          *uint32
	seccompMode    int // 0 none, 1 strict, 2 filter
	seccompFilters int
}

// readStatus reads /proc/<pid>/status (pid "self" for this process).
func readStatus(pid string) (status, error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return status{}, fmt.Errorf("while reading the identity of process %s: %w", pid, err)
	}
	return parseStatus(b)
}

// parseStatus reads the fields of a /proc/<pid>/status file that say who a
// process is and how it is confined. Every one of them is required (but
// Umask, which kernels before 4.7 lack): a field missing would mean a task
// silently less confined than the process.
func parseStatus(b []byte) (status, error) {
	var st status
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var err error
		switch key {
		case "Uid":
			err = ids(val, st.uid[:])
		case "Gid":
			err = ids(val, st.gid[:])
		case "Groups":
			for _, f := range strings.Fields(val) {
				g, perr := strconv.ParseUint(f, 10, 32)
				if perr != nil {
					err = perr
					break
				}
				st.groups = append(st.groups, uint32(g))
			}
		case "CapInh":
			st.caps.Inheritable, err = strconv.ParseUint(val, 16, 64)
		case "CapPrm":
			st.caps.Permitted, err = strconv.ParseUint(val, 16, 64)
		case "CapEff":
			st.caps.Effective, err = strconv.ParseUint(val, 16, 64)
		case "CapBnd":
			st.caps.Bounding, err = strconv.ParseUint(val, 16, 64)
		case "CapAmb":
			st.caps.Ambient, err = strconv.ParseUint(val, 16, 64)
		case "NoNewPrivs":
			st.noNewPrivs = val == "1"
		case "Umask":
			var m uint64
			if m, err = strconv.ParseUint(val, 8, 32); err == nil {
				u := uint32(m)
				st.umask = &u
			}
		case "Seccomp":
			st.seccompMode, err = strconv.Atoi(val)
		case "Seccomp_filters":
			st.seccompFilters, err = strconv.Atoi(val)
		default:
			continue
		}
		if err != nil {
			return status{}, fmt.Errorf("while reading %s in a process's status: %w", key, err)
		}
		seen[key] = true
	}
	for _, k := range []string{"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"} {
		if !seen[k] {
			return status{}, fmt.Errorf("a process's status has no %s field", k)
		}
	}
	if st.seccompMode == 2 && !seen["Seccomp_filters"] {
		// Kernels before 5.9 do not count the filters; one is the least
		// there is.
		st.seccompFilters = 1
	}
	return st, nil
}

// ids reads the real, effective and saved IDs of a Uid or Gid line (the
// fourth, the file-system ID, follows the effective one).
func ids(val string, out []uint32) error {
	f := strings.Fields(val)
	if len(f) < len(out) {
		return fmt.Errorf("%q has fewer than %d IDs", val, len(out))
	}
	for i := range out {
		v, err := strconv.ParseUint(f[i], 10, 32)
		if err != nil {
			return err
		}
		out[i] = uint32(v)
	}
	return nil
}

// credentials are the task's: main's identity, with capabilities limited
// to what this process holds (a task can never get more than the executor
// has; lacking some of main's makes the task less privileged, not more).
// missing lists main's capabilities the executor lacks.
func credentials(main, self status) (c shim.Credentials, missing uint64) {
	c = shim.Credentials{UID: main.uid, GID: main.gid, Groups: main.groups, NoNewPrivs: main.noNewPrivs, Umask: main.umask}
	bnd := main.caps.Bounding & self.caps.Bounding
	prm := main.caps.Permitted & self.caps.Permitted
	inh := main.caps.Inheritable & bnd & (self.caps.Inheritable | self.caps.Permitted)
	c.Capabilities = shim.Capabilities{
		Bounding: bnd, Permitted: prm, Effective: main.caps.Effective & prm, Inheritable: inh,
		Ambient: main.caps.Ambient & prm & inh,
	}
	missing = (main.caps.Bounding | main.caps.Permitted) &^ (self.caps.Bounding & self.caps.Permitted)
	return c, missing
}

// capability numbers the executor itself needs (linux/capability.h).
const (
	capSysPtrace = 19
	capSysAdmin  = 21
)

// capNames names capabilities by number, for messages.
var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
	"LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
	"MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
	"CHECKPOINT_RESTORE",
}

// capList names the capabilities of a set.
func capList(set uint64) string {
	var names []string
	for c := 0; c < 64; c++ {
		if set>>c&1 == 0 {
			continue
		}
		if c < len(capNames) {
			names = append(names, capNames[c])
		} else {
			names = append(names, strconv.Itoa(c))
		}
	}
	return strings.Join(names, ", ")
}

// lsm is a process's LSM labels; empty where that LSM is off.
type lsm struct {
	apparmor, selinux string
}

// lsmEnabled says which LSMs the kernel enforces.
type lsmEnabled struct{ apparmor, selinux bool }

func detectLSMs() lsmEnabled {
	var e lsmEnabled
	if b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled"); err == nil {
		e.apparmor = strings.TrimSpace(string(b)) == "Y"
	}
	if _, err := os.Stat("/sys/fs/selinux/enforce"); err == nil {
		e.selinux = true
	}
	return e
}

// readLSM reads a process's labels (pid "self" for this process).
func readLSM(pid string, on lsmEnabled) (lsm, error) {
	var l lsm
	if on.apparmor {
		b, err := os.ReadFile("/proc/" + pid + "/attr/apparmor/current")
		if errors.Is(err, os.ErrNotExist) {
			b, err = os.ReadFile("/proc/" + pid + "/attr/current")
		}
		if err != nil {
			return lsm{}, fmt.Errorf("while reading the AppArmor profile of process %s: %w", pid, err)
		}
		l.apparmor = apparmorProfile(string(b))
	}
	if on.selinux {
		b, err := os.ReadFile("/proc/" + pid + "/attr/current")
		if err != nil {
			return lsm{}, fmt.Errorf("while reading the SELinux label of process %s: %w", pid, err)
		}
		l.selinux = strings.TrimRight(string(b), "\x00\n")
	}
	return l, nil
}

// apparmorProfile takes the profile's name from an AppArmor label
// ("name (enforce)", or "unconfined").
func apparmorProfile(label string) string {
	label = strings.TrimRight(label, "\x00\n")
	if i := strings.LastIndex(label, " ("); i > 0 && strings.HasSuffix(label, ")") {
		label = label[:i]
	}
	return label
}

// lsmTransition returns the labels the task must be executed under to get
// main's: none where main's is the executor's own (the task inherits it),
// or where main is unconfined (nothing can lift the executor's own
// confinement, which only makes the task less privileged).
func lsmTransition(main, self lsm) lsm {
	var t lsm
	if main.apparmor != "" && main.apparmor != self.apparmor && main.apparmor != "unconfined" {
		t.apparmor = main.apparmor
	}
	if main.selinux != "" && main.selinux != self.selinux {
		t.selinux = main.selinux
	}
	return t
}
