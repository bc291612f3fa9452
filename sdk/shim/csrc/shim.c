/*
 * task-executor-shim: the per-task supervisor of package
 * github.com/opensandbox/task-executor/sdk/shim (see its documentation for
 * the protocol and the files).
 *
 * Why C: one shim runs per task, and it is started for every task. Written
 * in Go it cost about 4.5 ms of CPU per task (runtime start-up, threads) and
 * 0.5 MiB of memory on the 2-core machines this product is measured on; this
 * program costs a fraction of both. It does one thing, in one thread, with
 * one poll loop. It builds with any C library; musl is preferred (see
 * shim.Build): glibc's start-up probes the CPU with CPUID instructions,
 * which trap to the hypervisor in a VM and made up most of the shim's own
 * CPU time there.
 *
 * The values it shares with package shim (names, keys, reasons, the format)
 * come from contract.h, generated from package shim/internal/contract.
 *
 * It is started by a Launcher with /dev/null as descriptors 0-2 and its end
 * of a socket pair as descriptor 3 (JOB_FD), in a session of its own. It
 * waits for a job: the byte MSG_JOB carrying the locked state directory's
 * descriptor (SCM_RIGHTS), then a 4-byte little-endian length and that many
 * bytes of NUL-terminated fields:
 *
 *   format (JOB_FORMAT), dir, stdout, stderr, workdir, timeout ns, grace ns,
 *   argc, argv[0..argc-1], envc, env[0..envc-1]
 *
 * followed by: namespaces (FIELD_TRUE when a second descriptor came with
 * the job: a pidfd of the process whose mount, UTS, IPC, network and PID
 * namespaces the task is to run in, as in a sidecar entering the pod's main
 * container; else FIELD_FALSE), the output cap in bytes (0: none), then
 * optc and optc options "key=value" (see parse_option; an option the shim
 * does not know fails the job: they carry the task's identity and
 * confinement, which must never be dropped silently). An "oom" option comes
 * with one more descriptor, after the pidfd. A job it cannot read (of
 * another format, a field that is not what its place says, a field too many
 * or too few) it refuses with one report line, {"refused": "..."}, and
 * exits. Before the job, while idle, it may be sent MSG_JOIN with
 * descriptors of cgroup files to join (see join_cgroups), answered with one
 * byte.
 *
 * Run as "task-executor-shim --check-job N" (CHECK_JOB_ARG), it reads a job
 * from its standard input as if N descriptors had come with it, prints one
 * line, what it read or its refusal, and exits, starting nothing: the
 * parser's test and fuzz entry point (see check_job).
 *
 * With identity options (uid, caps, seccomp, ...) the task is forked, and
 * the child takes on that identity before it executes the command, in the
 * order runc uses for `runc exec`; the shim itself keeps its own.
 *
 * Without a cap the task writes straight into its output files. With one,
 * it writes into pipes and the shim copies into the files: when a file
 * reaches half the cap it becomes <name>.1 (replacing the previous one) and
 * a new file starts, so a stream never holds more than the cap on disk, and
 * its newest output is kept. The ".1" (ROTATED_SUFFIX) is the plugin
 * contract's rotated suffix (sdk.RotatedSuffix in sdk/logs.go), which the
 * host reads back.
 *
 * It answers with JSON lines on the socket: the start report, then the
 * exit report. EOF before a job means the launcher is gone: exit quietly.
 *
 * Every file the shim touches after the start is reached through a
 * descriptor opened before it (the state directory, /proc): once it has
 * entered a container's mount namespace, the executor's paths are not
 * there.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <limits.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sched.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "contract.h"

/* A job's descriptors: the state directory, then the namespaces' pidfd and
 * the OOM counter when the job says so. */
#define MAX_JOB_FDS 3
/* STOP_SIGNAL, a stop request: a real-time signal, queued (sigqueue,
 * SI_QUEUE) with the grace period in nanoseconds as its value (see Stop in
 * launch.go). A signal rather than a control FIFO in the state directory: a
 * FIFO is one more file per task, and making a file is the dearest part of
 * recording a task on some file systems. Kept blocked from the shim's
 * start, so that a request is queued until read; the task starts with it
 * unblocked. The request is packed by hand on the Go side
 * (signal_linux64.go) in the layout of siginfo_t the contract states:
 * this C library's must be the same, on this architecture. */
_Static_assert(STOP_SIGNAL > 32 && STOP_SIGNAL <= 64, "STOP_SIGNAL is a real-time signal");
_Static_assert(sizeof(siginfo_t) == SIGINFO_SIZE, "siginfo_t's size is the contract's");
_Static_assert(offsetof(siginfo_t, si_signo) == SIGINFO_SIGNO_OFFSET, "si_signo is where the contract says");
_Static_assert(offsetof(siginfo_t, si_code) == SIGINFO_CODE_OFFSET, "si_code is where the contract says");
_Static_assert(offsetof(siginfo_t, si_pid) == SIGINFO_PID_OFFSET, "si_pid is where the contract says");
_Static_assert(offsetof(siginfo_t, si_uid) == SIGINFO_UID_OFFSET, "si_uid is where the contract says");
_Static_assert(offsetof(siginfo_t, si_value) == SIGINFO_VALUE_OFFSET, "si_value is where the contract says");
_Static_assert(sizeof(union sigval) == 8, "si_value holds a grace period in nanoseconds");
_Static_assert(SI_QUEUE == SIGINFO_SI_QUEUE, "SI_QUEUE is the contract's");
/* How long a SIGKILLed task's end waits to be explained by the end of its
 * container's main process (see supervise). */
#define HOLDER_WAIT_MS 200

/* The kernel's ABI for capset(2) and seccomp(2), spelt out here: musl's
 * headers do not carry <linux/...>. */
#define CAP_VERSION_3 0x20080522
struct cap_header {
	uint32_t version;
	int pid;
};
struct cap_data {
	uint32_t effective, permitted, inheritable;
};
struct bpf_insn {
	uint16_t code;
	uint8_t jt, jf;
	uint32_t k;
};
struct bpf_prog {
	unsigned short len;
	struct bpf_insn *insns;
};
#define SECCOMP_MODE_FILTER_OP 1 /* SECCOMP_SET_MODE_FILTER */
#define BPF_MAX_INSNS 4096

static const char *state_dir, *out_path, *err_path, *work_dir;
static int dir_fd = -1;  /* the state directory (and its lock) */
static int proc_fd = -1; /* the executor's /proc */
static int ns_fd = -1;   /* pidfd of the process whose namespaces to enter */
static int stop_fd = -1; /* signalfd of STOP_SIGNAL */
/* A wrapper runtime's command (bwrap ..., firejail ...): the task's command,
 * looked up and checked as usual, is run through it, appended to it. Stop
 * signals go to the task's group but the wrapper, which would die of them
 * before the task could handle them. */
static char **wrap_argv;
static int wrap_argc;
static char **exec_argv; /* what is executed: the task's argv, or wrapped */
static int oom_fd = -1;  /* a cgroup file with an "oom_kill N" line */
static long long oom_base = -1; /* its count when the task started */
static long long ns_flags; /* CLONE_NEW* to enter; 0: the five above */
/* The reason recorded for a task ended because the process behind ns_fd
 * (its container's main process) exited; NULL: the task does not end then. */
static const char *gone_reason;
static pid_t holder_pid; /* the process behind ns_fd, for the records */
static unsigned long long holder_start;
static int holder_gone;

/* A seccomp filter to install, as read from another process. */
struct filter {
	unsigned flags;
	unsigned short len;
	struct bpf_insn *prog;
};

/* cred is the identity a task takes on (options uid, gid, ...). */
static struct {
	int set; /* any identity option was given */
	int ids; /* uid and gid were given */
	uid_t uid[3];
	gid_t gid[3];
	int groups_set;
	size_t ngroups;
	gid_t *groups;
	int caps; /* the five sets were given */
	unsigned long long bnd, prm, eff, inh, amb;
	int nnp;
	int umask; /* -1: unchanged */
	const char *apparmor, *selinux;
	size_t nfilters;
	struct filter *filters;
} cred = {.umask = -1};
static long long timeout_ns, grace_ns;
static long long max_log; /* output cap per stream, 0: none */
static char **task_argv, **task_env;

/* An output stream relayed through a pipe (with an output cap). */
struct stream {
	int rd;           /* the pipe's read end; -1 once drained */
	int file;         /* the output file, written at its end */
	int out_dir;      /* the output file's directory, for rotating */
	const char *name; /* the output file's name in out_dir */
	long long size;   /* bytes in the current file */
	int lost;         /* the file could not be created (said once) */
};
static struct stream streams[2] = {{-1, -1, -1, 0, 0, 0}, {-1, -1, -1, 0, 0, 0}};

static pid_t task_pid = -1;
static int reaped, stop_requested, timed_out;
static struct timespec started_at; /* CLOCK_REALTIME */
static int kill_armed;
static long long kill_at; /* CLOCK_MONOTONIC ns */
static int log_fd = -1;

/* ---- small helpers ---- */

/* errstr is strerror in the lower case Go's messages use ("no such file or
 * directory"), so that the runtime's messages read alike. */
static const char *errstr(int err) {
	static char b[4][128];
	static int next;
	char *p = b[next++ % 4];
	snprintf(p, 128, "%s", strerror(err));
	if (p[0] >= 'A' && p[0] <= 'Z' && !(p[1] >= 'A' && p[1] <= 'Z'))
		p[0] += 'a' - 'A';
	return p;
}

static long long mono_ns(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* rfc3339 formats a realtime timestamp the way Go's time.Time marshals. */
static void rfc3339(const struct timespec *t, char *buf, size_t n) {
	struct tm tm;
	gmtime_r(&t->tv_sec, &tm);
	size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + k, n - k, ".%09ldZ", t->tv_nsec);
}

/* logmsg writes to <dir>/LOG_FILE, created on first use: a task that gives
 * the shim nothing to say costs no file. */
static void logmsg(const char *level, const char *fmt, ...) {
	if (log_fd < 0 && dir_fd >= 0)
		log_fd = openat(dir_fd, LOG_FILE, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (log_fd < 0)
		return;
	char line[4096], ts[64];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	rfc3339(&now, ts, sizeof ts);
	int k = snprintf(line, sizeof line, "%s [%s] shim: ", ts, level);
	va_list ap;
	va_start(ap, fmt);
	k += vsnprintf(line + k, sizeof line - k, fmt, ap);
	va_end(ap);
	if (k >= (int)sizeof line - 1)
		k = sizeof line - 2;
	line[k++] = '\n';
	(void)!write(log_fd, line, k);
}

/* JKEY is a JSON object's key k, with its colon. */
#define JKEY(k) "\"" k "\":"

/* buf is a growable string for JSON. */
struct buf {
	char *p;
	size_t n, cap;
};

static void bput(struct buf *b, const char *s, size_t n) {
	if (b->n + n + 1 > b->cap) {
		b->cap = (b->n + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			abort();
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = 0;
}

static void bprintf(struct buf *b, const char *fmt, ...) {
	char tmp[512];
	va_list ap;
	va_start(ap, fmt);
	int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	bput(b, tmp, k < (int)sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static void bjson_str(struct buf *b, const char *s) {
	bput(b, "\"", 1);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			bput(b, e, 2);
		} else if (c < 0x20) {
			bprintf(b, "\\u%04x", c);
		} else {
			bput(b, (const char *)&c, 1);
		}
	}
	bput(b, "\"", 1);
}

static void bjson_time(struct buf *b, const char *key, const struct timespec *t) {
	char ts[64];
	rfc3339(t, ts, sizeof ts);
	bprintf(b, "\"%s\":\"%s\"", key, ts);
}

static void bputs(struct buf *b, const char *s) { bput(b, s, strlen(s)); }

/* read_proc reads a small file of the executor's /proc into b (NUL
 * terminated) and returns its length, or -1. */
static ssize_t read_proc(const char *path, char *b, size_t size) {
	int fd = openat(proc_fd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, b, size - 1);
	close(fd);
	b[n > 0 ? n : 0] = 0;
	return n;
}

/* proc_start returns a process's start time in clock ticks since boot (field
 * 22 of /proc/<pid>/stat), which with the PID names it unambiguously. */
static unsigned long long proc_start(pid_t pid) {
	char p[64], s[1024];
	snprintf(p, sizeof p, "%d/stat", pid);
	if (read_proc(p, s, sizeof s) <= 0)
		return 0;
	char *q = strrchr(s, ')');
	if (!q)
		return 0;
	q++;
	for (int field = 3; field < 22 && q; field++) {
		q = strchr(q + 1, ' ');
	}
	return q ? strtoull(q + 1, NULL, 10) : 0;
}

static int write_all(int fd, const char *p, size_t n) {
	while (n > 0) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += k;
		n -= k;
	}
	return 0;
}

/* write_atomic writes name in the state directory through a temporary file
 * and a rename. */
static int write_atomic(const char *name, const char *data, size_t n) {
	char tmp[512];
	snprintf(tmp, sizeof tmp, ".%s.tmp", name);
	int fd = openat(dir_fd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, data, n);
	if (close(fd) < 0)
		rc = -1;
	if (rc == 0 && renameat(dir_fd, tmp, dir_fd, name) < 0)
		rc = -1;
	return rc;
}

/* ---- reports ---- */

static void send_line(struct buf *b) {
	bput(b, "\n", 1);
	/* A launcher that has gone away is no concern: the files tell a
	 * restarted plugin everything. */
	if (write_all(JOB_FD, b->p, b->n) < 0 && errno != EPIPE)
		logmsg("WARN", "cannot send a report to the launcher: %s", errstr(errno));
}

struct exit_info {
	int code, signal;
	const char *reason;
	char message[2048];
	int started; /* startedAt is set */
	struct timespec finished;
};

static void exit_json(struct buf *b, const struct exit_info *e) {
	bprintf(b, "{" JKEY(KEY_EXIT_CODE) "%d", e->code);
	if (e->signal)
		bprintf(b, "," JKEY(KEY_SIGNAL) "%d", e->signal);
	bputs(b, "," JKEY(KEY_REASON));
	bjson_str(b, e->reason);
	if (e->message[0]) {
		bputs(b, "," JKEY(KEY_MESSAGE));
		bjson_str(b, e->message);
	}
	if (e->started) {
		bput(b, ",", 1);
		bjson_time(b, KEY_STARTED_AT, &started_at);
	}
	bput(b, ",", 1);
	bjson_time(b, KEY_FINISHED_AT, &e->finished);
	bput(b, "}", 1);
}

/* write_exit writes the exit record in place, in one write, rather than
 * renamed into place: a rename is one more dear metadata operation on the
 * path from a task's exit to its report. A reader that catches the file
 * half-written (it cannot parse it) while the shim lives looks again; once
 * the shim is dead, an unreadable record means the shim died writing it. */
static void write_exit(const struct exit_info *e) {
	struct buf b = {0};
	exit_json(&b, e);
	/* A full or read-only disk does not lose the exit: the shim keeps it
	 * and tries again (the executor frees space it set aside for this) for
	 * as long as it takes, since nothing else knows it once the shim is
	 * gone. A try cut short leaves no partial record behind. */
	long long wait_ms = 50;
	for (int tries = 0;; tries++) {
		int fd = openat(dir_fd, EXIT_FILE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int rc = fd < 0 ? -1 : write_all(fd, b.p, b.n);
		int err = errno;
		if (fd >= 0 && close(fd) < 0 && rc == 0) {
			rc = -1;
			err = errno;
		}
		if (rc == 0)
			break;
		if (fd >= 0)
			unlinkat(dir_fd, EXIT_FILE, 0);
		if (err != ENOSPC && err != EDQUOT && err != EROFS && err != EIO) {
			logmsg("ERROR", "cannot write the exit record: %s", errstr(err));
			break;
		}
		if (tries == 0)
			logmsg("WARN", "cannot write the exit record yet, trying again until it can: %s", errstr(err));
		struct timespec ts = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		if (wait_ms < 1000)
			wait_ms *= 2;
	}
	free(b.p);
}

static void report_exit(const struct exit_info *e, int file_first) {
	struct buf b = {0};
	if (file_first)
		write_exit(e);
	bputs(&b, "{" JKEY(KEY_EXIT));
	exit_json(&b, e);
	bput(&b, "}", 1);
	send_line(&b);
	free(b.p);
	close(JOB_FD);
	if (!file_first)
		write_exit(e);
}

/* ---- the job ---- */

static int read_full(int fd, void *p, size_t n) {
	char *c = p;
	while (n > 0) {
		ssize_t k = read(fd, c, n);
		if (k == 0)
			return -1;
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += k;
		n -= k;
	}
	return 0;
}

/* hexval decodes one hex digit, or returns -1. */
static int hexval(char c) {
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* hex64 reads 1 to 16 hex digits at v into *out and returns where they
 * end, or NULL (strtoull would take spaces, a sign, "0x"). */
static const char *hex64(const char *v, unsigned long long *out) {
	unsigned long long x = 0;
	int n = 0;
	for (; hexval(*v) >= 0; v++) {
		if (++n > 16)
			return NULL;
		x = x << 4 | (unsigned)hexval(*v);
	}
	*out = x;
	return n > 0 ? v : NULL;
}

/* parse_ids reads n comma-separated decimal IDs. */
static int parse_ids(const char *v, unsigned *out, size_t n) {
	for (size_t i = 0; i < n; i++) {
		char *end;
		if (!(*v >= '0' && *v <= '9'))
			return -1; /* strtoul would take spaces and signs */
		errno = 0;
		unsigned long x = strtoul(v, &end, 10);
		if (errno || end == v || x > 0xffffffffUL || (i + 1 < n ? *end != ',' : *end != 0))
			return -1;
		out[i] = (unsigned)x;
		v = end + 1;
	}
	return 0;
}

/* parse_filter reads "FLAGS:HEX", a seccomp filter as the kernel gives it
 * (PTRACE_SECCOMP_GET_FILTER): struct sock_filter in native byte order. */
static int parse_filter(const char *v) {
	char *end;
	if (!(*v >= '0' && *v <= '9'))
		return -1;
	errno = 0;
	unsigned long flags = strtoul(v, &end, 10);
	if (errno || end == v || *end != ':' || flags > 0xffffffffUL)
		return -1;
	const char *hex = end + 1;
	size_t n = strlen(hex);
	if (n == 0 || n % (2 * sizeof(struct bpf_insn)) != 0 || n / (2 * sizeof(struct bpf_insn)) > BPF_MAX_INSNS)
		return -1;
	size_t bytes = n / 2;
	unsigned char *b = malloc(bytes);
	if (!b)
		return -1;
	for (size_t i = 0; i < bytes; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0) {
			free(b);
			return -1;
		}
		b[i] = (unsigned char)(hi << 4 | lo);
	}
	struct filter *fs = realloc(cred.filters, (cred.nfilters + 1) * sizeof *fs);
	if (!fs) {
		free(b);
		return -1;
	}
	cred.filters = fs;
	fs[cred.nfilters].flags = (unsigned)flags;
	fs[cred.nfilters].len = (unsigned short)(bytes / sizeof(struct bpf_insn));
	fs[cred.nfilters].prog = (struct bpf_insn *)b;
	cred.nfilters++;
	return 0;
}

/* num reads a whole decimal field into *v; -1 for anything else (an empty
 * field, spaces, a sign but '-', trailing bytes, overflow): a field misread
 * as 0 would be a task without its timeout, say. */
static int num(const char *s, long long *v) {
	char *end;
	if (!(*s == '-' || (*s >= '0' && *s <= '9')))
		return -1;
	errno = 0;
	*v = strtoll(s, &end, 10);
	return errno || end == s || *end ? -1 : 0;
}

/* parse_option applies one "key=value" option of the job; -1 for one it
 * does not know or cannot read. */
static int parse_option(char *opt) {
	char *v = strchr(opt, '=');
	if (!v)
		return -1;
	*v++ = 0;
	if (strcmp(opt, OPT_NSFLAGS) == 0)
		return num(v, &ns_flags) < 0 || ns_flags < 0 || ns_flags > INT_MAX ? -1 : 0;
	if (strcmp(opt, OPT_GONE) == 0) {
		gone_reason = v;
		return *v ? 0 : -1;
	}
	if (strcmp(opt, OPT_OOM) == 0)
		return strcmp(v, FIELD_TRUE) == 0 ? 0 : -1;
	if (strcmp(opt, OPT_WRAP) == 0) {
		char **w = realloc(wrap_argv, (wrap_argc + 2) * sizeof *w);
		if (!w)
			return -1;
		wrap_argv = w;
		wrap_argv[wrap_argc++] = v;
		wrap_argv[wrap_argc] = NULL;
		/* The wrapper is named by an absolute path: looking it up in the
		 * task's PATH would let the task choose it. */
		return wrap_argc == 1 && v[0] != '/' ? -1 : 0;
	}
	cred.set = 1;
	if (strcmp(opt, OPT_UID) == 0) {
		cred.ids |= 1;
		return parse_ids(v, cred.uid, 3);
	}
	if (strcmp(opt, OPT_GID) == 0) {
		cred.ids |= 2;
		return parse_ids(v, cred.gid, 3);
	}
	if (strcmp(opt, OPT_GROUPS) == 0) {
		size_t n = *v ? 1 : 0;
		for (char *c = v; *c; c++)
			n += *c == ',';
		if (n > NGROUPS_MAX)
			return -1;
		free(cred.groups); /* an option given twice: the last one holds */
		cred.groups_set = 1;
		cred.groups = calloc(n + 1, sizeof(gid_t));
		cred.ngroups = n;
		return !cred.groups || (n > 0 && parse_ids(v, cred.groups, n) < 0) ? -1 : 0;
	}
	if (strcmp(opt, OPT_CAPS) == 0) {
		/* bounding, permitted, effective, inheritable, ambient, in hex */
		unsigned long long *sets[] = {&cred.bnd, &cred.prm, &cred.eff, &cred.inh, &cred.amb};
		for (int i = 0; i < 5; i++) {
			const char *end = hex64(v, sets[i]);
			if (!end || (i < 4 ? *end != ',' : *end != 0))
				return -1;
			v = (char *)end + 1;
		}
		cred.caps = 1;
		return 0;
	}
	if (strcmp(opt, OPT_NNP) == 0) {
		cred.nnp = strcmp(v, FIELD_TRUE) == 0;
		return cred.nnp || strcmp(v, FIELD_FALSE) == 0 ? 0 : -1;
	}
	if (strcmp(opt, OPT_UMASK) == 0) {
		char *end;
		if (!(*v >= '0' && *v <= '7'))
			return -1;
		long m = strtol(v, &end, 8);
		if (end == v || *end || m < 0 || m > 0777)
			return -1;
		cred.umask = (int)m;
		return 0;
	}
	if (strcmp(opt, OPT_APPARMOR) == 0) {
		cred.apparmor = v;
		return *v ? 0 : -1;
	}
	if (strcmp(opt, OPT_SELINUX) == 0) {
		cred.selinux = v;
		return *v ? 0 : -1;
	}
	if (strcmp(opt, OPT_SECCOMP) == 0)
		return parse_filter(v);
	return -1;
}

/* join_cgroups writes "0" to each of fds (cgroup v1 tasks files, or
 * cgroup.procs), which moves this process into their cgroups, and closes
 * them; it returns 0 or the first errno. A single-threaded process moving
 * itself through a v1 tasks file is not made to wait for the RCU grace
 * period (milliseconds, with the cgroup lock of the whole machine held) that
 * moving another process costs. */
static int join_cgroups(const int *fds, int n) {
	int e = 0;
	for (int i = 0; i < n; i++) {
		ssize_t w;
		do {
			w = write(fds[i], "0", 1);
		} while (w < 0 && errno == EINTR);
		if (w < 0 && !e)
			e = errno ? errno : EIO;
		close(fds[i]);
	}
	return e;
}

/* read_job reads a job's length and fields from in, the nfd descriptors
 * fds having come with it, and returns 1, or -1 for a malformed job, -2 for
 * one of another format. Every field must be what its place says, and
 * there must be neither fewer nor more of them: a job this shim does not
 * read whole it must not run. */
static int read_job(int in, const int *fds, int nfd) {
	if (nfd < 1 || nfd > MAX_JOB_FDS)
		return -1;
	dir_fd = fds[0]; /* kept open, its flock held, until we exit */
	int next_fd = 1;

	unsigned char lenb[4];
	if (read_full(in, lenb, 4) < 0)
		return -1;
	uint32_t len = lenb[0] | lenb[1] << 8 | lenb[2] << 16 | (uint32_t)lenb[3] << 24;
	if (len == 0 || len > MAX_JOB)
		return -1;
	char *p = malloc(len + 1);
	if (!p || read_full(in, p, len) < 0)
		return -1;
	p[len] = 0;
	if (p[len - 1] != 0)
		return -1;

	/* Fields are NUL-terminated strings laid end to end; the last byte is
	 * a NUL, so none runs past the end. */
	char *end = p + len, *q = p;
#define NEXT(v)             \
	do {                    \
		if (q >= end)       \
			return -1;      \
		(v) = q;            \
		q += strlen(q) + 1; \
	} while (0)
/* NUM reads a number field into v (see num). */
#define NUM(v)                 \
	do {                       \
		char *f_;              \
		NEXT(f_);              \
		if (num(f_, &(v)) < 0) \
			return -1;         \
	} while (0)
/* COUNT reads a count of fields that follow, each at least its NUL: no
 * more than there are bytes left. */
#define COUNT(v)                      \
	do {                              \
		NUM(v);                       \
		if ((v) < 0 || (v) > end - q) \
			return -1;                \
	} while (0)
	char *s;
	NEXT(s);
	if (strcmp(s, JOB_FORMAT) != 0)
		return -2;
	NEXT(s); state_dir = s;
	NEXT(s); out_path = s;
	NEXT(s); err_path = s;
	NEXT(s); work_dir = s;
	NUM(timeout_ns);
	NUM(grace_ns);
	long long argc, envc, optc;
	COUNT(argc);
	task_argv = calloc(argc + 1, sizeof *task_argv);
	if (!task_argv)
		return -1;
	for (long long i = 0; i < argc; i++)
		NEXT(task_argv[i]);
	COUNT(envc);
	task_env = calloc(envc + 1, sizeof *task_env);
	if (!task_env)
		return -1;
	for (long long i = 0; i < envc; i++)
		NEXT(task_env[i]);
	NEXT(s);
	if (strcmp(s, FIELD_TRUE) == 0) {
		if (next_fd >= nfd)
			return -1; /* namespaces promised, no pidfd came */
		ns_fd = fds[next_fd++];
	} else if (strcmp(s, FIELD_FALSE) != 0) {
		return -1;
	}
	NUM(max_log);
	if (max_log < 0)
		return -1;
	COUNT(optc);
	for (long long i = 0; i < optc; i++) {
		NEXT(s);
		int is_oom = strncmp(s, OPT_OOM "=", sizeof OPT_OOM) == 0;
		if (parse_option(s) < 0) {
			fprintf(stderr, SHIM_NAME ": bad job option %s\n", s);
			return -1;
		}
		if (is_oom) {
			if (next_fd >= nfd)
				return -1;
			oom_fd = fds[next_fd++];
		}
	}
#undef COUNT
#undef NUM
#undef NEXT
	if (q != end || next_fd != nfd || (gone_reason && ns_fd < 0) || (cred.set && !cred.ids))
		return -1;
	return 1;
}

/* receive_job waits for the job on JOB_FD, joining cgroups as asked
 * meanwhile, and returns read_job's answer, or 0 on EOF (no job will
 * come). */
static int receive_job(void) {
	char one;
	char cbuf[CMSG_SPACE(MAX_JOIN * sizeof(int))];
	struct iovec iov = {&one, 1};
	struct msghdr msg;
	struct cmsghdr *c;
	int nfd;
	int fds[MAX_JOIN];
	for (;;) {
		msg = (struct msghdr){.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
		ssize_t n;
		do {
			n = recvmsg(JOB_FD, &msg, MSG_CMSG_CLOEXEC);
		} while (n < 0 && errno == EINTR);
		if (n == 0)
			return 0;
		if (n < 0 || (msg.msg_flags & MSG_CTRUNC))
			return -1;
		c = CMSG_FIRSTHDR(&msg);
		if (!c || c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			return -1;
		nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		if (nfd < 1 || nfd > MAX_JOIN)
			return -1;
		memcpy(fds, CMSG_DATA(c), nfd * sizeof(int));
		if (one != MSG_JOIN)
			break;
		/* Cgroups to join, before a job or while idle as a spare: the
		 * answer is one byte, 0 or the errno. */
		int e = join_cgroups(fds, nfd);
		unsigned char r = e > 255 ? 255 : (unsigned char)e;
		if (write_all(JOB_FD, (const char *)&r, 1) < 0)
			return -1;
	}
	if (one != MSG_JOB)
		return -1;
	return read_job(JOB_FD, fds, nfd);
}

/* refusal is the report line of a job read_job refused with got. */
static const char *refusal(int got) {
	return got == -2 ? "{" JKEY(KEY_REFUSED) "\"" REFUSED_OTHER_FORMAT "\"}\n"
	                 : "{" JKEY(KEY_REFUSED) "\"" REFUSED_MALFORMED "\"}\n";
}

/* ---- starting the task ---- */

struct start_err {
	int code;
	char msg[2048];
};

static const char *env_value(const char *key) {
	size_t k = strlen(key);
	const char *v = NULL;
	for (char **e = task_env; *e; e++)
		if (strncmp(*e, key, k) == 0 && (*e)[k] == '=')
			v = *e + k + 1; /* the last one wins */
	return v;
}

/* look_path finds file the way a shell would, with the task's PATH. */
static int look_path(const char *file, char *out, size_t n, struct start_err *se) {
	struct stat st;
	if (strchr(file, '/')) {
		if (stat(file, &st) < 0) {
			se->code = 127;
			snprintf(se->msg, sizeof se->msg, "exec %s: %s", file, errstr(errno));
			return -1;
		}
		if (S_ISDIR(st.st_mode) || !(st.st_mode & 0111)) {
			se->code = 126;
			snprintf(se->msg, sizeof se->msg, "exec %s: permission denied", file);
			return -1;
		}
		snprintf(out, n, "%s", file);
		return 0;
	}
	const char *path = env_value("PATH");
	if (!path || !*path)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	char denied[4096] = "";
	const char *d = path;
	for (;;) {
		const char *colon = strchr(d, ':');
		size_t dl = colon ? (size_t)(colon - d) : strlen(d);
		char cand[4096];
		if (dl == 0)
			snprintf(cand, sizeof cand, "./%s", file);
		else
			snprintf(cand, sizeof cand, "%.*s/%s", (int)dl, d, file);
		if (stat(cand, &st) == 0 && !S_ISDIR(st.st_mode)) {
			if (st.st_mode & 0111) {
				snprintf(out, n, "%s", cand);
				return 0;
			}
			if (!denied[0])
				snprintf(denied, sizeof denied, "%s", cand);
		}
		if (!colon)
			break;
		d = colon + 1;
	}
	if (denied[0]) {
		se->code = 126;
		snprintf(se->msg, sizeof se->msg, "exec %s: permission denied", denied);
	} else {
		se->code = 127;
		snprintf(se->msg, sizeof se->msg, "exec \"%s\": executable file not found in $PATH", file);
	}
	return -1;
}

static int exec_error_code(int err) {
	switch (err) {
	case ENOENT:
	case ENOTDIR:
		return 127;
	case EACCES:
	case ENOEXEC:
	case EISDIR:
	case EPERM:
	case ETXTBSY:
		return 126;
	}
	return 128;
}

static const int handled_signals[] = {SIGHUP, SIGINT, SIGTERM, SIGPIPE};

/* pidfd_pid returns the PID behind a pidfd, from its fdinfo. */
static pid_t pidfd_pid(int fd) {
	char p[64], b[1024];
	snprintf(p, sizeof p, "self/fdinfo/%d", fd);
	if (read_proc(p, b, sizeof b) <= 0)
		return 0;
	char *l = strstr(b, "\nPid:");
	return l ? (pid_t)atoi(l + 5) : 0;
}

/* enter_namespaces moves the shim into the mount, UTS, IPC and network
 * namespaces of the process behind ns_fd (or those ns_flags names), and its
 * future children into the PID namespace: the task then runs as if started
 * in that container. */
static int enter_namespaces(struct start_err *se) {
	if (ns_fd < 0)
		return 0;
	holder_pid = pidfd_pid(ns_fd);
	holder_start = holder_pid > 0 ? proc_start(holder_pid) : 0;
	int flags = ns_flags ? (int)ns_flags : CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID;
	if (setns(ns_fd, flags) < 0) {
		se->code = 128;
		snprintf(se->msg, sizeof se->msg, "cannot enter the main container's namespaces: %s",
		         errno == ESRCH ? "the main container's process has exited" : errstr(errno));
		return -1;
	}
	if (!gone_reason) {
		close(ns_fd);
		ns_fd = -1;
	}
	return 0;
}

/* open_relay opens a stream's output file and directory (before entering
 * a container, where their paths do not exist) and its pipe; *task_end is
 * the pipe's write end, for the task. */
static int open_relay(struct stream *st, const char *path, int *task_end) {
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	st->name = slash ? path + (slash - dir) + 1 : path;
	st->out_dir = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (st->out_dir < 0)
		return -1;
	/* Not O_APPEND: only the shim writes, at the offset it keeps. A file
	 * that is not there yet is made at the stream's first output: on some
	 * disks creating a file is the dearest part of a start, and most tasks
	 * leave one of their two streams empty. */
	st->file = open(path, O_WRONLY | O_CLOEXEC);
	if (st->file < 0 && errno != ENOENT)
		return -1;
	off_t end = st->file < 0 ? 0 : lseek(st->file, 0, SEEK_END);
	st->size = end < 0 ? 0 : end;
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	fcntl(p[0], F_SETFL, O_NONBLOCK);
	st->rd = p[0];
	*task_end = p[1];
	return 0;
}

/* rotate moves a stream's full file aside as <name>.1 (ROTATED_SUFFIX)
 * and starts a new one. */
static void rotate(struct stream *st) {
	char old[4200];
	snprintf(old, sizeof old, "%s" ROTATED_SUFFIX, st->name);
	int nf = -1;
	if (renameat(st->out_dir, st->name, st->out_dir, old) == 0)
		nf = openat(st->out_dir, st->name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (nf < 0) {
		/* Still bounded, at the cost of the older half. */
		logmsg("WARN", "cannot rotate %s, truncating it: %s", st->name, errstr(errno));
		if (ftruncate(st->file, 0) == 0)
			lseek(st->file, 0, SEEK_SET);
	} else {
		close(st->file);
		st->file = nf;
	}
	st->size = 0;
}

/* pump copies what the task wrote into a stream's pipe to its file, and
 * returns 1 once the pipe is drained for good (EOF). */
static int pump(struct stream *st) {
	static char chunk[65536];
	for (;;) {
		ssize_t n = read(st->rd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? 0 : 1;
		if (n == 0)
			return 1;
		if (st->file < 0) {
			/* Tried again at each chunk (a full disk may have room
			 * again), said once. */
			st->file = openat(st->out_dir, st->name, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
			if (st->file < 0 && !st->lost)
				logmsg("WARN", "cannot create %s, dropping the task's output: %s", st->name, errstr(errno));
			st->lost = st->file < 0;
			off_t end = st->file < 0 ? -1 : lseek(st->file, 0, SEEK_END);
			st->size = end < 0 ? 0 : end;
		}
		if (st->file < 0)
			continue;
		if (st->size + n > max_log / 2 && st->size > 0)
			rotate(st);
		if (write_all(st->file, chunk, n) < 0)
			logmsg("WARN", "cannot write the task's output to %s: %s", st->name, errstr(errno));
		st->size += n;
	}
}

/* pump_all serves the streams poll found ready (or all, when p is NULL),
 * closing the drained ones. */
static void pump_all(struct pollfd *p) {
	for (int i = 0; i < 2; i++) {
		struct stream *st = &streams[i];
		if (st->rd < 0 || (p && !(p[i].revents & (POLLIN | POLLHUP | POLLERR))))
			continue;
		if (pump(st)) {
			close(st->rd);
			st->rd = -1;
		}
	}
}

/* drain copies the rest of the task's output once it has exited: until
 * every writer has closed its end, or a bound, since something the task
 * started outside its process group may hold a pipe open for ever. */
static void drain(void) {
	long long until = mono_ns() + 1000000000LL;
	while (streams[0].rd >= 0 || streams[1].rd >= 0) {
		long long left = until - mono_ns();
		if (left <= 0)
			break;
		struct pollfd p[2] = {{streams[0].rd, POLLIN, 0}, {streams[1].rd, POLLIN, 0}};
		if (poll(p, 2, (int)(left / 1000000LL) + 1) < 0 && errno != EINTR)
			break;
		pump_all(p);
	}
	for (int i = 0; i < 2; i++)
		if (streams[i].rd >= 0) {
			close(streams[i].rd);
			streams[i].rd = -1;
		}
}

/* ---- taking on an identity ---- */

/* oom_kills returns the oom_kill count of oom_fd's cgroup file (v1
 * memory.oom_control, v2 memory.events), or -1. */
static long long oom_kills(void) {
	char b[1024];
	ssize_t n = pread(oom_fd, b, sizeof b - 1, 0);
	if (n <= 0)
		return -1;
	b[n] = 0;
	for (char *l = b; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (strncmp(l, "oom_kill ", 9) == 0)
			return atoll(l + 9);
	return -1;
}

/* child_err is what a child that could not become the task says. */
struct child_err {
	int code;
	char msg[1024];
};

static void child_fail(int fd, int code, const char *what, int err) {
	struct child_err ce = {code, {0}};
	snprintf(ce.msg, sizeof ce.msg, "%s: %s", what, errstr(err));
	(void)!write(fd, &ce, sizeof ce);
	_exit(127);
}

static int load_filters(void) {
	for (size_t i = 0; i < cred.nfilters; i++) {
		struct bpf_prog prog = {cred.filters[i].len, cred.filters[i].prog};
		if (syscall(SYS_seccomp, SECCOMP_MODE_FILTER_OP, cred.filters[i].flags, &prog) < 0)
			return -1;
	}
	return 0;
}

/* write_attr writes an LSM attribute of the calling process (through the
 * executor's /proc: the container's may be masked). */
static int write_attr(const char *name, const char *fallback, const char *val) {
	int fd = openat(proc_fd, name, O_WRONLY | O_CLOEXEC);
	if (fd < 0 && errno == ENOENT && fallback)
		fd = openat(proc_fd, fallback, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = write_all(fd, val, strlen(val));
	int e = errno;
	close(fd);
	errno = e;
	return rc;
}

/* become turns the forked child into the task: cred's identity and
 * confinement, in runc's order for `runc exec` (a seccomp filter needs
 * CAP_SYS_ADMIN to load without no_new_privs, so it then comes first, and
 * otherwise last, to confine as little of the set-up as possible), the
 * working directory entered as the task's user, then the command. It
 * returns only by exiting. */
static void become(int efd, const char *path, const char *wd, int devnull, int out, int err) {
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	setpgid(0, 0);
	if (dup2(devnull, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		child_fail(efd, 128, "while setting up the task's output", errno);
	if (cred.nfilters && !cred.nnp && load_filters() < 0)
		child_fail(efd, 128, "while installing the main container's seccomp filter", errno);
	if (cred.caps) {
		for (int c = 0; c < 64; c++) {
			int in = prctl(PR_CAPBSET_READ, c, 0, 0, 0);
			if (in < 0)
				break; /* past the kernel's last capability */
			if (in && !(cred.bnd >> c & 1) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
				child_fail(efd, 128, "while dropping from the capability bounding set", errno);
		}
	}
	if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
		child_fail(efd, 128, "while keeping capabilities across the change of user", errno);
	if (cred.groups_set && setgroups(cred.ngroups, cred.groups) < 0)
		child_fail(efd, 128, "while setting the task's supplementary groups", errno);
	if (setresgid(cred.gid[0], cred.gid[1], cred.gid[2]) < 0)
		child_fail(efd, 128, "while setting the task's group", errno);
	if (setresuid(cred.uid[0], cred.uid[1], cred.uid[2]) < 0)
		child_fail(efd, 128, "while setting the task's user", errno);
	if (prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) < 0)
		child_fail(efd, 128, "while keeping capabilities across the change of user", errno);
	if (cred.caps) {
		struct cap_header h = {CAP_VERSION_3, 0};
		struct cap_data d[2] = {
		    {(uint32_t)cred.eff, (uint32_t)cred.prm, (uint32_t)cred.inh},
		    {(uint32_t)(cred.eff >> 32), (uint32_t)(cred.prm >> 32), (uint32_t)(cred.inh >> 32)},
		};
		if (syscall(SYS_capset, &h, d) < 0)
			child_fail(efd, 128, "while setting the task's capabilities", errno);
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
			child_fail(efd, 128, "while clearing the ambient capabilities", errno);
		for (int c = 0; c < 64; c++)
			if ((cred.amb >> c & 1) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) < 0)
				child_fail(efd, 128, "while raising an ambient capability", errno);
	}
	if (cred.umask >= 0)
		umask((mode_t)cred.umask);
	if (cred.nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		child_fail(efd, 128, "while setting no_new_privs", errno);
	if (cred.apparmor) {
		char v[4200];
		snprintf(v, sizeof v, "exec %s", cred.apparmor);
		if (write_attr("self/attr/apparmor/exec", "self/attr/exec", v) < 0)
			child_fail(efd, 128, "while setting the task's AppArmor profile", errno);
	}
	if (cred.selinux && write_attr("self/attr/exec", NULL, cred.selinux) < 0)
		child_fail(efd, 128, "while setting the task's SELinux label", errno);
	if (chdir(wd) < 0) {
		char what[4200];
		snprintf(what, sizeof what, "working directory: chdir %s", wd);
		child_fail(efd, 128, what, errno);
	}
	if (cred.nfilters && cred.nnp && load_filters() < 0)
		child_fail(efd, 128, "while installing the main container's seccomp filter", errno);
	execve(path, exec_argv, task_env);
	int e = errno;
	char what[4200];
	snprintf(what, sizeof what, "exec %s", path);
	child_fail(efd, exec_error_code(e), what, e);
}

/* spawn_as starts the task as cred says. The child reports a failure on a
 * close-on-exec pipe, which its exec closes: EOF means it runs. */
static pid_t spawn_as(const char *path, const char *wd, int devnull, int out, int err, struct start_err *se) {
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0) {
		se->code = 128;
		snprintf(se->msg, sizeof se->msg, "while starting the task: %s", errstr(errno));
		return -1;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(p[0]);
		become(p[1], path, wd, devnull, out, err);
	}
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		se->code = 128;
		snprintf(se->msg, sizeof se->msg, "while starting the task: fork: %s", errstr(errno));
		return -1;
	}
	/* The group exists before anyone signals it, whoever runs first. */
	setpgid(pid, pid);
	struct child_err ce;
	ssize_t n;
	do {
		n = read(p[0], &ce, sizeof ce);
	} while (n < 0 && errno == EINTR);
	close(p[0]);
	if (n == 0)
		return pid;
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	se->code = n == (ssize_t)sizeof ce ? ce.code : 128;
	snprintf(se->msg, sizeof se->msg, "%s", n == (ssize_t)sizeof ce ? ce.msg : "the task's process ended while starting");
	return -1;
}

static pid_t start_task(struct start_err *se) {
	char path[4096];
	if (!task_argv[0] || !task_argv[0][0]) {
		se->code = 127;
		snprintf(se->msg, sizeof se->msg, "empty command");
		return -1;
	}
	/* The output files are the executor's: open them before entering a
	 * container, where their paths do not exist. */
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	int out = -1, err = -1;
	if (max_log > 0) {
		if (open_relay(&streams[0], out_path, &out) < 0 || open_relay(&streams[1], err_path, &err) < 0) {
			se->code = 128;
			snprintf(se->msg, sizeof se->msg, "while opening the output file: %s", errstr(errno));
			return -1;
		}
	} else {
		out = open(out_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		err = out < 0 ? -1 : open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	}
	if (devnull < 0 || out < 0 || err < 0) {
		se->code = 128;
		snprintf(se->msg, sizeof se->msg, "while opening the output file: %s", errstr(errno));
		return -1;
	}
	if (enter_namespaces(se) < 0 || look_path(task_argv[0], path, sizeof path, se) < 0) {
		close(devnull);
		close(out);
		close(err);
		return -1;
	}

	char wd[4096];
	if (work_dir[0]) {
		snprintf(wd, sizeof wd, "%s", work_dir);
	} else {
		/* The state directory's parent, as Spec.Dir documents. */
		snprintf(wd, sizeof wd, "%s", state_dir);
		char *slash = strrchr(wd, '/');
		if (slash && slash != wd)
			*slash = 0;
	}
	struct stat st;
	int bad = 0;
	if (stat(wd, &st) < 0) {
		snprintf(se->msg, sizeof se->msg, "working directory: stat %s: %s", wd, errstr(errno));
		bad = 1;
	} else if (!S_ISDIR(st.st_mode)) {
		snprintf(se->msg, sizeof se->msg, "working directory %s: not a directory", wd);
		bad = 1;
	}
	if (bad) {
		se->code = 128;
		close(devnull);
		close(out);
		close(err);
		return -1;
	}

	exec_argv = task_argv;
	if (wrap_argc > 0) {
		/* The wrapper, then the command as found, then its arguments. */
		int argc = 0;
		while (task_argv[argc])
			argc++;
		exec_argv = calloc(wrap_argc + argc + 1, sizeof *exec_argv);
		char *found = strdup(path); /* path is reused for the wrapper's */
		if (!exec_argv || !found) {
			se->code = 128;
			snprintf(se->msg, sizeof se->msg, "while starting the task: out of memory");
			close(devnull);
			close(out);
			close(err);
			return -1;
		}
		memcpy(exec_argv, wrap_argv, wrap_argc * sizeof *exec_argv);
		exec_argv[wrap_argc] = found;
		for (int i = 1; i < argc; i++)
			exec_argv[wrap_argc + i] = task_argv[i];
		snprintf(path, sizeof path, "%s", wrap_argv[0]);
	}
	if (oom_fd >= 0)
		oom_base = oom_kills();
	if (cred.set) {
		pid_t pid = spawn_as(path, wd, devnull, out, err, se);
		close(devnull);
		close(out);
		close(err);
		return pid;
	}

	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, devnull, 0);
	posix_spawn_file_actions_adddup2(&fa, out, 1);
	posix_spawn_file_actions_adddup2(&fa, err, 2);
	posix_spawn_file_actions_addchdir_np(&fa, wd);
	posix_spawnattr_init(&at);
	sigset_t none, def;
	sigemptyset(&none);
	sigemptyset(&def);
	for (size_t i = 0; i < sizeof handled_signals / sizeof *handled_signals; i++)
		sigaddset(&def, handled_signals[i]);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &def);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	int rc = posix_spawn(&pid, path, &fa, &at, exec_argv, task_env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(devnull);
	close(out);
	close(err);
	if (rc != 0) {
		se->code = exec_error_code(rc);
		snprintf(se->msg, sizeof se->msg, "exec %s: %s", path, errstr(rc));
		return -1;
	}
	return pid;
}

/* ---- supervising ---- */

static void signal_task(int sig) {
	/* Only before the reap: afterwards the PID (and so the group ID) may
	 * belong to someone else. */
	if (task_pid > 0 && !reaped && kill(-task_pid, sig) < 0 && errno != ESRCH)
		logmsg("WARN", "cannot signal the task with %d: %s", sig, errstr(errno));
}

/* signal_wrapped sends sig to every process of the task's group but the
 * wrapper's: the group's leader (task_pid), and any other process running
 * the wrapper's executable (bwrap's init in a PID namespace, say), found in
 * the executor's /proc. */
static void signal_wrapped(int sig) {
	if (task_pid <= 0 || reaped)
		return;
	struct stat wst;
	int know_wrapper = stat(wrap_argv[0], &wst) == 0;
	int fd = openat(proc_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		logmsg("WARN", "cannot list processes to signal the wrapped task; signalling its whole group");
		signal_task(sig);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		long pid = strtol(e->d_name, &end, 10);
		if (*end || pid <= 0 || pid == task_pid)
			continue;
		char p[64], st[1024];
		snprintf(p, sizeof p, "%ld/stat", pid);
		if (read_proc(p, st, sizeof st) <= 0)
			continue;
		/* After the command's name: state, ppid, pgrp. */
		char *q = strrchr(st, ')');
		char state;
		long ppid, pgrp;
		if (!q || sscanf(q + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3 || pgrp != task_pid)
			continue;
		struct stat est;
		snprintf(p, sizeof p, "%ld/exe", pid);
		if (know_wrapper && fstatat(proc_fd, p, &est, 0) == 0 && est.st_dev == wst.st_dev && est.st_ino == wst.st_ino)
			continue;
		kill((pid_t)pid, sig);
	}
	closedir(d);
}

/* children_of_shim lists up to n of the shim's live children, from the
 * executor's /proc (the shim may be in another mount namespace); it
 * returns how many, or -1 when they cannot be listed. */
static int children_of_shim(pid_t *out, int n) {
	char path[64], b[4096];
	snprintf(path, sizeof path, "%d/task/%d/children", (int)getpid(), (int)getpid());
	ssize_t len = read_proc(path, b, sizeof b);
	if (len < 0)
		return -1;
	int k = 0;
	for (char *p = b; k < n && *p;) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p)
			break;
		out[k++] = (pid_t)v;
		p = end;
		while (*p == ' ' || *p == '\n')
			p++;
	}
	return k;
}

/* kill_orphans ends every process the task left behind outside its
 * process group (setsid, a double fork, a daemon): the shim is their child
 * subreaper, so each comes to it once its parent is gone, and is killed
 * with its group and reaped, round after round, until none is left. A
 * task ends with all its processes, as a container does. (In another PID
 * namespace orphans go to that namespace's init instead, never to the
 * shim: a sidecar task's daemons end with the main container.) */
static void kill_orphans(void) {
	long long until = mono_ns() + 5000000000LL;
	int killed = 0;
	for (;;) {
		/* Reap what has ended; ECHILD: nothing is left. */
		int r;
		for (;;) {
			siginfo_t si;
			memset(&si, 0, sizeof si);
			r = waitid(P_ALL, 0, &si, WEXITED | WNOHANG);
			if (r < 0 || si.si_pid == 0)
				break;
		}
		if (r < 0 && errno == ECHILD)
			break;
		pid_t kids[256];
		int n = children_of_shim(kids, 256);
		for (int i = 0; i < n; i++) {
			/* Its group too: a daemon's own children may not have come
			 * to the shim yet. */
			kill(-kids[i], SIGKILL);
			kill(kids[i], SIGKILL);
			killed++;
		}
		if (mono_ns() > until) {
			logmsg("WARN", "processes the task left behind are still there after 5s");
			break;
		}
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	if (killed > 0)
		logmsg("INFO", "killed processes the task left outside its process group: count=%d", killed);
}

static void arm(int tfd, long long at_mono_ns) {
	struct itimerspec its = {0};
	if (at_mono_ns <= 0)
		at_mono_ns = 1; /* zero would disarm */
	its.it_value.tv_sec = at_mono_ns / 1000000000LL;
	its.it_value.tv_nsec = at_mono_ns % 1000000000LL;
	timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* terminate sends SIGTERM to the task's group and makes sure a SIGKILL
 * follows within grace; a later request with a shorter grace brings the
 * SIGKILL forward, a longer one never delays it. */
static void terminate(long long grace, int kill_tfd) {
	if (grace <= 0) {
		signal_task(SIGKILL);
		return;
	}
	if (wrap_argc > 0)
		signal_wrapped(SIGTERM);
	else
		signal_task(SIGTERM);
	long long at = mono_ns() + grace;
	if (kill_armed && at >= kill_at)
		return;
	kill_armed = 1;
	kill_at = at;
	arm(kill_tfd, at);
}

/* state_json describes the running task (package shim's State). */
static void state_json(struct buf *b) {
	char ts[64];
	rfc3339(&started_at, ts, sizeof ts);
	bprintf(b, "{" JKEY(KEY_SHIM_PID) "%d," JKEY(KEY_SHIM_START) "%llu," JKEY(KEY_PID) "%d," JKEY(KEY_PID_START) "%llu," JKEY(KEY_STARTED_AT) "\"%s\"",
	        getpid(), proc_start(getpid()), task_pid, proc_start(task_pid), ts);
	if (gone_reason && holder_pid > 0) {
		bprintf(b, "," JKEY(KEY_HOLDER_PID) "%d," JKEY(KEY_HOLDER_START) "%llu," JKEY(KEY_GONE_REASON), holder_pid, holder_start);
		bjson_str(b, gone_reason);
	}
	bput(b, "}", 1);
}

static void record(void) {
	struct buf b = {0};
	state_json(&b);
	int rc = write_atomic(STATE_FILE, b.p, b.n);
	free(b.p);
	if (rc < 0) {
		/* Without the record nobody could find the task again: better to
		 * end it now than to leave it running unsupervised. */
		logmsg("ERROR", "cannot record the task's state, killing it: %s", errstr(errno));
		signal_task(SIGKILL);
	}
}

/* read_stops carries out the stop requests queued on stop_fd. Only a
 * queued signal is a request: one sent with kill(2) (a careless kill of the
 * shim) carries no grace period and is ignored. */
static void read_stops(int kill_tfd) {
	struct signalfd_siginfo si;
	while (read(stop_fd, &si, sizeof si) == (ssize_t)sizeof si) {
		long long g = (long long)si.ssi_ptr;
		if (si.ssi_code != SI_QUEUE || g < 0) {
			logmsg("WARN", "ignoring a stop signal that is not a request: code=%d pid=%u", si.ssi_code, si.ssi_pid);
			continue;
		}
		stop_requested = 1;
		terminate(g, kill_tfd);
	}
}

/* frac formats v/unit with the trailing zeros of its fraction trimmed. */
static void frac(char *buf, size_t n, long long v, long long unit, const char *suffix) {
	long long whole = v / unit, rest = v % unit;
	if (rest == 0) {
		snprintf(buf, n, "%lld%s", whole, suffix);
		return;
	}
	int digits = 0;
	for (long long u = unit; u > 1; u /= 10)
		digits++;
	char f[32];
	snprintf(f, sizeof f, "%0*lld", digits, rest);
	for (int i = (int)strlen(f) - 1; i > 0 && f[i] == '0'; i--)
		f[i] = 0;
	snprintf(buf, n, "%lld.%s%s", whole, f, suffix);
}

/* duration formats ns the way Go's time.Duration does ("300ms", "1m30s"). */
static void duration(long long ns, char *buf, size_t n) {
	if (ns < 1000LL)
		snprintf(buf, n, "%lldns", ns);
	else if (ns < 1000000LL)
		frac(buf, n, ns, 1000LL, "\u00b5s");
	else if (ns < 1000000000LL)
		frac(buf, n, ns, 1000000LL, "ms");
	else {
		long long h = ns / 3600000000000LL, m = ns / 60000000000LL % 60;
		char sec[48];
		frac(sec, sizeof sec, ns % 60000000000LL, 1000000000LL, "s");
		if (h > 0)
			snprintf(buf, n, "%lldh%lldm%s", h, m, sec);
		else if (m > 0)
			snprintf(buf, n, "%lldm%s", m, sec);
		else
			snprintf(buf, n, "%s", sec);
	}
}

/* signame names the common signals (the C library's own table is not
 * portable between C libraries). */
static const char *signame(int sig) {
	static const struct {
		int n;
		const char *s;
	} names[] = {
	    {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},   {SIGQUIT, "SIGQUIT"}, {SIGILL, "SIGILL"},
	    {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"},
	    {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"}, {SIGSEGV, "SIGSEGV"}, {SIGUSR2, "SIGUSR2"},
	    {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"}, {SIGTERM, "SIGTERM"}, {SIGXCPU, "SIGXCPU"},
	    {SIGXFSZ, "SIGXFSZ"}, {SIGSYS, "SIGSYS"},
	};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (names[i].n == sig)
			return names[i].s;
	return "signal";
}

/* supervise runs the task to its end and returns how it ended. */
static void supervise(struct exit_info *e) {
	int pidfd = (int)syscall(SYS_pidfd_open, task_pid, 0);
	int rec_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	int to_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	int kill_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	long long t0 = mono_ns();
	arm(rec_tfd, t0 + RECORD_DELAY_NS);
	if (timeout_ns > 0)
		arm(to_tfd, t0 + timeout_ns);
	for (;;) {
		struct pollfd p[8] = {
		    {pidfd, POLLIN, 0},   {rec_tfd, POLLIN, 0},          {to_tfd, POLLIN, 0},           {kill_tfd, POLLIN, 0},
		    {stop_fd, POLLIN, 0}, {streams[0].rd, POLLIN, 0}, {streams[1].rd, POLLIN, 0},
		    {holder_gone ? -1 : ns_fd, POLLIN, 0},
		};
		/* Without a pidfd (an old kernel), look every 10 ms. */
		int n = poll(p, 8, pidfd < 0 ? 10 : -1);
		pump_all(p + 5);
		if (n < 0 && errno != EINTR)
			logmsg("ERROR", "poll: %s", errstr(errno));
		siginfo_t si = {0};
		if ((pidfd >= 0 && (p[0].revents & POLLIN)) ||
		    (pidfd < 0 && waitid(P_PID, task_pid, &si, WEXITED | WNOWAIT | WNOHANG) == 0 && si.si_pid == task_pid))
			break;
		uint64_t ticks;
		if (p[1].revents & POLLIN) {
			(void)!read(rec_tfd, &ticks, sizeof ticks);
			record();
		}
		if (p[2].revents & POLLIN) {
			(void)!read(to_tfd, &ticks, sizeof ticks);
			timed_out = 1;
			char d[32];
			duration(timeout_ns, d, sizeof d);
			logmsg("INFO", "task timed out: timeout=%s", d);
			terminate(grace_ns, kill_tfd);
		}
		if (p[3].revents & POLLIN) {
			(void)!read(kill_tfd, &ticks, sizeof ticks);
			signal_task(SIGKILL);
		}
		if (p[4].revents & POLLIN)
			read_stops(kill_tfd);
		if (p[7].revents & (POLLIN | POLLHUP)) {
			/* The container the task runs in has ended: the task ends
			 * with it, as the runtime would end a process exec'ed there. */
			holder_gone = 1;
			logmsg("INFO", "the process whose namespaces the task runs in (%d) has exited; killing the task", holder_pid);
			signal_task(SIGKILL);
		}
	}

	/* The task's main process has exited and is a zombie until reaped, so
	 * its PID (and the group ID) cannot be reused: end whatever else is left
	 * in its group (a task ends with its main process, as a container
	 * does), then reap it. */
	signal_task(SIGKILL);
	int status = 0;
	while (waitpid(task_pid, &status, 0) < 0 && errno == EINTR)
		;
	reaped = 1;
	kill_orphans();
	/* Output is complete once the exit is known. */
	drain();
	clock_gettime(CLOCK_REALTIME, &e->finished);
	int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
	/* A wrapper reports its command's death by a signal as the exit code
	 * 128+N, as shells do: that is the only account of it there is. */
	if (!sig && wrap_argc > 0 && WEXITSTATUS(status) > SIGNAL_EXIT_BASE && WEXITSTATUS(status) <= SIGNAL_EXIT_BASE + 64)
		sig = WEXITSTATUS(status) - SIGNAL_EXIT_BASE;
	int sigkilled = sig == SIGKILL;
	int oom = sigkilled && oom_fd >= 0 && oom_base >= 0 && oom_kills() > oom_base;
	if (gone_reason && !holder_gone && ns_fd >= 0) {
		/* A task SIGKILLed at the moment its container ends was killed
		 * with it (the runtime kills a container's processes in no set
		 * order; a PID namespace kills its members with its init): wait
		 * a moment for the container's process to end too. */
		int unexplained = sigkilled && !oom && !timed_out && !stop_requested;
		struct pollfd h = {ns_fd, POLLIN, 0};
		holder_gone = poll(&h, 1, unexplained ? HOLDER_WAIT_MS : 0) > 0;
	}
	e->started = 1;
	e->message[0] = 0;
	if (sig) {
		e->signal = sig;
		e->code = SIGNAL_EXIT_BASE + e->signal;
		e->reason = REASON_FAILED;
		snprintf(e->message, sizeof e->message, "killed by signal %d (%s)", e->signal, signame(e->signal));
	} else {
		e->code = WEXITSTATUS(status);
		e->reason = e->code == 0 ? REASON_SUCCEEDED : REASON_FAILED;
	}
	if (holder_gone) {
		e->reason = gone_reason;
		snprintf(e->message, sizeof e->message, GONE_MESSAGE, holder_pid);
	} else if (oom) {
		e->reason = REASON_OOM_KILLED;
		snprintf(e->message, sizeof e->message, "killed by the kernel for lack of memory in its cgroup");
	} else if (timed_out) {
		char d[32];
		duration(timeout_ns, d, sizeof d);
		e->reason = REASON_TASK_TIMEOUT;
		snprintf(e->message, sizeof e->message, "task ran longer than its timeout of %s and was stopped", d);
	} else if (stop_requested) {
		snprintf(e->message, sizeof e->message, "stopped on request");
	}
}

/* close_inherited closes the descriptors above the socket that were
 * inherited without close-on-exec (whatever the plugin's own parent left
 * open): nothing of the sort may reach the task or be held by the shim. */
static void close_inherited(void) {
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	int self = dirfd(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		int fd = atoi(de->d_name);
		if (fd <= JOB_FD || fd == self)
			continue;
		int flags = fcntl(fd, F_GETFD);
		if (flags >= 0 && !(flags & FD_CLOEXEC))
			close(fd);
	}
	closedir(d);
}

/* ---- checking a job ---- */

static void bjson_strs(struct buf *b, const char *key, char **v, int n) {
	bprintf(b, "," JKEY("%s") "[", key);
	for (int i = 0; n < 0 ? v[i] != NULL : i < n; i++) {
		if (i > 0)
			bput(b, ",", 1);
		bjson_str(b, v[i]);
	}
	bput(b, "]", 1);
}

/* job_json describes the job read_job read (for check_job; its keys are
 * this mode's own, read only by package shim's tests). */
static void job_json(struct buf *b) {
	bputs(b, "{\"job\":{\"dir\":");
	bjson_str(b, state_dir);
	bputs(b, ",\"stdout\":");
	bjson_str(b, out_path);
	bputs(b, ",\"stderr\":");
	bjson_str(b, err_path);
	bputs(b, ",\"workdir\":");
	bjson_str(b, work_dir);
	bprintf(b, ",\"timeout\":%lld,\"grace\":%lld", timeout_ns, grace_ns);
	bjson_strs(b, "argv", task_argv, -1);
	bjson_strs(b, "env", task_env, -1);
	bprintf(b, ",\"namespaces\":%s,\"maxLogBytes\":%lld,\"nsflags\":%lld,\"oom\":%s", ns_fd >= 0 ? "true" : "false",
	        max_log, ns_flags, oom_fd >= 0 ? "true" : "false");
	if (gone_reason) {
		bputs(b, ",\"gone\":");
		bjson_str(b, gone_reason);
	}
	if (wrap_argc > 0)
		bjson_strs(b, "wrap", wrap_argv, wrap_argc);
	if (cred.set) {
		bprintf(b, ",\"uid\":[%u,%u,%u],\"gid\":[%u,%u,%u]", cred.uid[0], cred.uid[1], cred.uid[2], cred.gid[0],
		        cred.gid[1], cred.gid[2]);
		if (cred.groups_set) {
			bputs(b, ",\"groups\":[");
			for (size_t i = 0; i < cred.ngroups; i++)
				bprintf(b, i > 0 ? ",%u" : "%u", cred.groups[i]);
			bput(b, "]", 1);
		}
		if (cred.caps)
			bprintf(b, ",\"caps\":[%llu,%llu,%llu,%llu,%llu]", cred.bnd, cred.prm, cred.eff, cred.inh, cred.amb);
		bprintf(b, ",\"nnp\":%s", cred.nnp ? "true" : "false");
		if (cred.umask >= 0)
			bprintf(b, ",\"umask\":%d", cred.umask);
		if (cred.apparmor) {
			bputs(b, ",\"apparmor\":");
			bjson_str(b, cred.apparmor);
		}
		if (cred.selinux) {
			bputs(b, ",\"selinux\":");
			bjson_str(b, cred.selinux);
		}
		bputs(b, ",\"seccomp\":[");
		for (size_t i = 0; i < cred.nfilters; i++) {
			bprintf(b, "%s{\"flags\":%u,\"program\":\"", i > 0 ? "," : "", cred.filters[i].flags);
			const unsigned char *insns = (const unsigned char *)cred.filters[i].prog;
			for (size_t k = 0; k < cred.filters[i].len * sizeof(struct bpf_insn); k++)
				bprintf(b, "%02x", insns[k]);
			bputs(b, "\"}");
		}
		bput(b, "]", 1);
	}
	bputs(b, "}}\n");
}

/* check_job is the shim run as "task-executor-shim --check-job N": it reads
 * a job from its standard input as if N descriptors (of /dev/null) had come
 * with it, and prints one line, what it read (exiting 0) or its refusal, as
 * a launcher would get it (exiting 1); it starts nothing. 2: it could not
 * tell. */
static int check_job(int argc, char **argv) {
	long long n;
	if (argc != 3 || num(argv[2], &n) < 0 || n < 1 || n > MAX_JOB_FDS) {
		fprintf(stderr, "usage: " SHIM_NAME " " CHECK_JOB_ARG " DESCRIPTORS (1-%d) < JOB\n", MAX_JOB_FDS);
		return 2;
	}
	int fds[MAX_JOB_FDS];
	for (int i = 0; i < n; i++) {
		fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fds[i] < 0) {
			fprintf(stderr, SHIM_NAME ": /dev/null: %s\n", errstr(errno));
			return 2;
		}
	}
	int got = read_job(0, fds, (int)n);
	struct buf b = {0};
	if (got < 0)
		bputs(&b, refusal(got));
	else
		job_json(&b);
	return write_all(1, b.p, b.n) < 0 ? 2 : got < 0;
}

static void ignore(int sig) { (void)sig; }

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], CHECK_JOB_ARG) == 0)
		return check_job(argc, argv);
	/* Started from /proc/self/fd/N (the executor's shim in memory), the
	 * shim would be named "N" in ps; the kernel keeps 15 bytes of this. */
	prctl(PR_SET_NAME, SHIM_NAME, 0, 0, 0);
	fcntl(JOB_FD, F_SETFD, FD_CLOEXEC);
	close_inherited();
	/* The shim lives in a session of its own; swallow the signals a
	 * terminal or a careless kill would send, with a handler rather than
	 * SIG_IGN: an ignored disposition would pass on to the task. */
	struct sigaction sa = {0};
	sa.sa_handler = ignore;
	for (size_t i = 0; i < sizeof handled_signals / sizeof *handled_signals; i++)
		sigaction(handled_signals[i], &sa, NULL);

	proc_fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	/* What the task leaves behind outside its process group comes to the
	 * shim, not to init or the executor, to be ended with it. */
	prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, STOP_SIGNAL);
	sigprocmask(SIG_BLOCK, &stop, NULL);
	stop_fd = signalfd(-1, &stop, SFD_NONBLOCK | SFD_CLOEXEC);
	int got = receive_job();
	if (got == 0)
		return 0; /* an idle shim whose launcher went away */
	if (got < 0) {
		/* Said to the launcher, which has no other way to learn it: this
		 * shim's stderr is /dev/null until a job names its directory. */
		const char *r = refusal(got);
		write_all(JOB_FD, r, strlen(r));
		fprintf(stderr, SHIM_NAME ": cannot read a job from descriptor %d\n", JOB_FD);
		return 1;
	}

	struct exit_info e = {0};
	struct start_err se = {0};
	clock_gettime(CLOCK_REALTIME, &started_at);
	task_pid = start_task(&se);
	if (task_pid < 0) {
		logmsg("INFO", "task could not start: %s", se.msg);
		e.code = se.code;
		e.reason = REASON_START_ERROR;
		snprintf(e.message, sizeof e.message, "%s", se.msg);
		clock_gettime(CLOCK_REALTIME, &e.finished);
		report_exit(&e, 1);
		return 0;
	}

	struct buf b = {0};
	bputs(&b, "{" JKEY(KEY_STATE));
	state_json(&b);
	bput(&b, "}", 1);
	send_line(&b);
	free(b.p);

	supervise(&e);
	/* The launcher, if it still listens, hears first; the record follows.
	 * Either reaching the host is enough for the exit to be known. */
	report_exit(&e, 0);
	return 0;
}
