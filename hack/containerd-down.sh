#!/usr/bin/env bash
# containerd-down.sh DIR: undoes containerd-up.sh DIR and leaves nothing
# behind: container processes, runc shims, containerd, their cgroups, shim
# sockets, mounts under DIR, and DIR itself. Idempotent, and safe after an
# up that failed half-way.
#
# Every process is found by a PID file under DIR and checked to belong to
# this DIR before it is signalled; nothing is ever killed by name, because
# other containerds (the machine's, or another test package's) may be running.
set -euo pipefail

WAIT_S=10

die() {
	echo "containerd-down: $*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: $0 DIR"
[ -e "$1" ] || exit 0
[ "$(id -u)" -eq 0 ] || die "must run as root; running as uid $(id -u)"
DIR="$(cd "$1" && pwd -P)"
[ "$DIR" != / ] || die "refusing to remove /"
# An up that failed before writing anything leaves an empty DIR.
if rmdir "$DIR" 2>/dev/null; then exit 0; fi
[ -e "$DIR/.containerd-test-env" ] ||
	die "$DIR was not made by containerd-up.sh (no .containerd-test-env); refusing to remove it"
SOCK="$DIR/containerd.sock"
TASKS="$DIR/state/io.containerd.runtime.v2.task"

# alive, cmdline, read_pid, wait_gone.
. "$(dirname "${BASH_SOURCE[0]}")/procs.sh"

# --- containerd ---------------------------------------------------------------

# containerd goes first: alive, it would react to the dying shims below by
# starting cleanup processes of its own that race with ours.
if pid="$(read_pid "$DIR/containerd.pid")" && alive "$pid" &&
	[[ "$(cmdline "$pid")" == *" --config $DIR/config.toml "* ]]; then
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_gone "$pid"; then
		kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" || die "containerd (pid $pid) did not exit"
	fi
fi

# --- containers and shims ------------------------------------------------------

cgroup_mounts=()
while read -r _ _ _ _ mnt _ _ rest; do
	case "${rest#*- }" in
	cgroup\ * | cgroup2\ *) cgroup_mounts+=("$mnt") ;;
	esac
done </proc/self/mountinfo

# A shim of this containerd: started with its socket as -address.
is_our_shim() {
	alive "$1" && [[ "$(cmdline "$1")" == *" -address $SOCK "* ]]
}

inits=()
shims=()
cgroups=()
sockets=()
shopt -s nullglob
for bundle in "$TASKS"/*/*/; do
	bundle="${bundle%/}"
	id="${bundle##*/}"
	cg=""
	if [ -r "$bundle/config.json" ]; then
		cg="$(grep -o '"cgroupsPath":"[^"]*"' "$bundle/config.json" | head -n 1 | cut -d'"' -f4 || true)"
	fi
	# Only a cgroup named after the container is its own; anything broader
	# (or a systemd slice spec) must never be emptied or removed.
	if [ -n "$cg" ] && [ "${cg##*/}" = "$id" ] && [[ "$cg" != *:* ]]; then
		cgroups+=("$cg")
	else
		cg=""
	fi
	# A stale init.pid may name a recycled PID: only a process in the
	# container's cgroup, or whose parent is a shim of this containerd, is
	# taken. That parent is the shim (it is the subreaper of its containers);
	# containerd 1.6 writes no shim.pid.
	if pid="$(read_pid "$bundle/init.pid")" && alive "$pid"; then
		ppid="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
		ours_shim=0
		if [ -n "$ppid" ] && is_our_shim "$ppid"; then
			ours_shim=1
			shims+=("$ppid")
		fi
		if [ "$ours_shim" -eq 1 ] || { [ -n "$cg" ] && grep -qF ":$cg" "/proc/$pid/cgroup" 2>/dev/null; }; then
			inits+=("$pid")
		fi
	fi
	# Newer containerds do write one.
	if pid="$(read_pid "$bundle/shim.pid")" && is_our_shim "$pid"; then
		shims+=("$pid")
	fi
	addr="$(cat "$bundle/address" 2>/dev/null || true)"
	addr="${addr#unix://}"
	# Shim sockets live under /run/containerd/s whatever the config says.
	case "$addr" in
	/run/containerd/s/*) sockets+=("$addr") ;;
	esac
done
# A shim whose containers have all exited is no one's parent any more; its
# working directory is still its bundle under DIR.
while read -r cwd; do
	pid="${cwd#/proc/}"
	pid="${pid%/cwd}"
	if is_our_shim "$pid"; then shims+=("$pid"); fi
done < <(find /proc -mindepth 2 -maxdepth 2 -name cwd -lname "$TASKS/*" 2>/dev/null || true)
if [ ${#shims[@]} -gt 0 ]; then
	mapfile -t shims < <(printf '%s\n' "${shims[@]}" | sort -un)
fi

# cgroup_procs CGROUP: every PID in the container's cgroup (and below), in
# every hierarchy; exec'd processes and forks live there too.
cgroup_procs() {
	local m
	for m in "${cgroup_mounts[@]}"; do
		[ -d "$m$1" ] || continue
		find "$m$1" -name cgroup.procs -exec cat {} + 2>/dev/null || true
	done | sort -un
}

victims=("${inits[@]}")
deadline=$((SECONDS + WAIT_S))
while :; do
	for cg in "${cgroups[@]}"; do
		mapfile -t -O "${#victims[@]}" victims < <(cgroup_procs "$cg")
	done
	[ ${#victims[@]} -gt 0 ] || break
	kill -KILL "${victims[@]}" 2>/dev/null || true
	wait_gone "${victims[@]}" || die "container processes did not exit: ${victims[*]}"
	victims=()
	# A process may have forked while being killed; look again.
	[ "$SECONDS" -lt "$deadline" ] || break
done

if [ ${#shims[@]} -gt 0 ]; then
	kill -KILL "${shims[@]}" 2>/dev/null || true
	wait_gone "${shims[@]}" || die "containerd-shim-runc-v2 did not exit: ${shims[*]}"
fi

for cg in "${cgroups[@]}"; do
	for m in "${cgroup_mounts[@]}"; do
		[ -d "$m$cg" ] || continue
		find "$m$cg" -depth -type d -exec rmdir {} + 2>/dev/null ||
			echo "containerd-down: could not remove cgroup $m$cg" >&2
	done
done

for s in "${sockets[@]}"; do
	rm -f "$s"
done

# --- mounts and DIR -------------------------------------------------------------

# mounts_under: mount points at or below DIR, deepest first. mountinfo
# escapes blanks as \040 and the like; printf %b turns them back.
mounts_under() {
	local mnt
	while read -r _ _ _ _ mnt _; do
		mnt="$(printf '%b' "$mnt")"
		case "$mnt" in
		"$DIR" | "$DIR"/*) printf '%s\t%s\n' "$(tr -cd / <<<"$mnt" | wc -c)" "$mnt" ;;
		esac
	done </proc/self/mountinfo | sort -t$'\t' -k1,1nr | cut -f2-
}

for _ in 1 2 3; do
	mapfile -t mounts < <(mounts_under)
	[ ${#mounts[@]} -gt 0 ] || break
	for m in "${mounts[@]}"; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
done
mapfile -t mounts < <(mounts_under)
[ ${#mounts[@]} -eq 0 ] || die "still mounted under $DIR, not removing it: ${mounts[*]}"

# --one-file-system: a mount that appeared after the check is not followed.
rm -rf --one-file-system "$DIR"
