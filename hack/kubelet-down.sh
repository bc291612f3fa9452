#!/usr/bin/env bash
# kubelet-down.sh DIR: undoes kubelet-up.sh DIR: stops the kubelet (by its
# PID, checked to be this DIR's), ends every process left in its cgroups
# (its pods' containers), removes those cgroups, checks that none of its
# mounts is left, and removes DIR. Idempotent. Run it before
# containerd-down.sh of the runtime the kubelet used.
set -euo pipefail
WAIT_S=10
die() {
	echo "kubelet-down: $*" >&2
	exit 1
}
[ $# -eq 1 ] || die "usage: $0 DIR"
[ -e "$1" ] || exit 0
[ "$(id -u)" -eq 0 ] || die "must run as root; running as uid $(id -u)"
DIR="$(cd "$1" && pwd -P)"
[ "$DIR" != / ] || die "refusing to remove /"
if rmdir "$DIR" 2>/dev/null; then exit 0; fi
[ -e "$DIR/.kubelet-test-env" ] || die "$DIR was not made by kubelet-up.sh (no .kubelet-test-env); refusing to remove it"

# alive, cmdline, read_pid, wait_gone.
. "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

if pid="$(read_pid "$DIR/kubelet.pid")" && alive "$pid" && [[ "$(cmdline "$pid")" == *"--root-dir=$DIR/root"* ]]; then
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_gone "$pid"; then
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" || die "the kubelet (pid $pid) did not exit"
	fi
fi

# Its pods' processes: everything in the cgroups below its root, in any
# hierarchy. They are containers of the runtime, which sees them exit.
if root="$(cat "$DIR/cgroup-root" 2>/dev/null)" && [[ "$root" == /kubelet-test-* ]]; then
	dirs=()
	for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
		if [ -d "$h${root#/}" ]; then dirs+=("$h${root#/}"); fi
	done
	for _ in 1 2 3; do
		pids=()
		for d in "${dirs[@]}"; do
			while read -r f; do
				while read -r p; do
					if [ -n "$p" ]; then pids+=("$p"); fi
				done <"$f"
			done < <(find "$d" -name cgroup.procs 2>/dev/null)
		done
		[ ${#pids[@]} -gt 0 ] || break
		kill -KILL "${pids[@]}" 2>/dev/null || true
		wait_gone "${pids[@]}" || true
	done
	for d in "${dirs[@]}"; do
		# Deepest first; a cgroup whose last process has just exited may
		# refuse for a moment.
		for _ in $(seq 50); do
			find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
			[ -d "$d" ] || break
			sleep 0.1
		done
		[ ! -d "$d" ] || die "cannot remove the cgroup $d"
	done
fi

if grep -qF " $DIR/" /proc/self/mountinfo; then
	die "mounts are left under $DIR"
fi
rm -rf "$DIR"
