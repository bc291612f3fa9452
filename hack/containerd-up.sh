#!/usr/bin/env bash
# containerd-up.sh DIR: starts a containerd private to DIR (root, state,
# sockets, logs, images all under DIR) serving the CRI v1 API, with two small
# locally built images imported, for tests of the CRI runtime plugin.
# Nothing is pulled from a registry: the images are built from busybox-static.
#
# On success it prints, on stdout:
#   CRI_SOCKET=DIR/containerd.sock
#   CRI_BUSYBOX_IMAGE=localhost/busybox:latest
#   CRI_PAUSE_IMAGE=localhost/pause:latest
# containerd-down.sh DIR undoes all of it. Keep DIR short: unix socket paths
# are limited to 107 bytes.
set -euo pipefail
# The ERR trap below must also fire inside functions.
set -E

BUSYBOX_IMAGE=localhost/busybox:latest
PAUSE_IMAGE=localhost/pause:latest
# Bump when the image recipe below changes, so cached tars are rebuilt.
IMAGE_RECIPE=1
READY_TIMEOUT_S=20

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
started=0

die() {
	echo "containerd-up: $*" >&2
	exit 1
}

# Whatever failed, the caller gets the reason, containerd's last words, and
# nothing left running.
on_exit() {
	local rc=$?
	if [ "$rc" -ne 0 ] && [ "$started" -eq 1 ]; then
		if [ -s "$DIR/containerd.log" ]; then
			echo "containerd-up: last lines of $DIR/containerd.log:" >&2
			tail -n 20 "$DIR/containerd.log" >&2 || true
		fi
		"$here/containerd-down.sh" "$DIR" >&2 || true
	fi
	exit "$rc"
}

[ $# -eq 1 ] || die "usage: $0 DIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (containerd and runc need it); running as uid $(id -u)"
mkdir -p "$1"
DIR="$(cd "$1" && pwd -P)"
# The marker is what lets containerd-down.sh trust DIR enough to remove it.
if [ ! -e "$DIR/.containerd-test-env" ] && [ -n "$(ls -A "$DIR")" ]; then
	die "$DIR is not empty and was not made by this script; refusing to use it"
fi
[ ! -e "$DIR/containerd.pid" ] || die "$DIR already has a containerd (run containerd-down.sh $DIR first)"
: >"$DIR/.containerd-test-env"
started=1
trap on_exit EXIT
trap 'echo "containerd-up: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

SOCK="$DIR/containerd.sock"
# 107 is sun_path's limit; ".ttrpc" is appended for the second socket.
[ $((${#SOCK} + 6)) -le 107 ] || die "DIR is too long for a unix socket path: $SOCK.ttrpc"

cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/task-executor-images"
mkdir -p "$cache"
# Test binaries of several packages may run this at once: one installs and
# builds, the others wait and then find the cache filled.
exec 9>"$cache/.lock"
flock -w 600 9 || die "timed out waiting for the lock on $cache"

# --- packages ---------------------------------------------------------------

# ldd fails on a static binary, so its words, not its status, tell.
is_static() {
	local out
	[ -x "$1" ] || return 1
	out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
	[[ "$out" == *"not a dynamic executable"* ]]
}

missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v ctr >/dev/null || missing+=(containerd)
command -v containerd-shim-runc-v2 >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
command -v umoci >/dev/null || missing+=(umoci)
# The image needs a static busybox: a dynamic one has no libc in the image.
is_static /bin/busybox || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	aptlog="$DIR/apt.log"
	export DEBIAN_FRONTEND=noninteractive
	apt_install() {
		apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >>"$aptlog" 2>&1
	}
	# A fresh machine may have no package lists yet.
	if ! apt_install; then
		if ! { apt-get update -qq >>"$aptlog" 2>&1 && apt_install; }; then
			tail -n 20 "$aptlog" >&2
			die "apt-get install ${missing[*]} failed (log above)"
		fi
	fi
	is_static /bin/busybox || die "/bin/busybox is still not a static binary after installing busybox-static"
fi

# --- images -----------------------------------------------------------------

bb_sum="$(sha256sum /bin/busybox | cut -d' ' -f1)"
imgdir="$cache/$bb_sum-r$IMAGE_RECIPE"

# build_image NAME KIND: writes an OCI layout tar of a busybox rootfs to
# $imgdir/NAME.tar; KIND "busybox" runs sh by default, "pause" waits forever.
build_image() {
	local name=$1 kind=$2 work layout bundle rootfs a
	work="$(mktemp -d "$cache/build.XXXXXX")"
	layout="$work/layout"
	bundle="$work/bundle"
	umoci init --layout "$layout"
	umoci new --image "$layout:latest"
	umoci unpack --image "$layout:latest" "$bundle" >/dev/null
	rootfs="$bundle/rootfs"
	mkdir -p "$rootfs"/{bin,dev,etc,proc,sys,root,var,run}
	install -d -m 1777 "$rootfs/tmp"
	install -m 0755 /bin/busybox "$rootfs/bin/busybox"
	# Every applet busybox has, so tests are not limited to a hand-picked few.
	for a in $(/bin/busybox --list); do
		[ "$a" = busybox ] || ln -sf busybox "$rootfs/bin/$a"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
	umoci repack --image "$layout:latest" "$bundle"
	umoci config --image "$layout:latest" \
		--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--config.workingdir /
	case $kind in
	busybox)
		umoci config --image "$layout:latest" --config.cmd sh
		;;
	pause)
		# PID 1 of the pod: sleeps until told to stop, and stops cleanly.
		umoci config --image "$layout:latest" \
			--config.entrypoint /bin/sh --config.entrypoint -c \
			--config.entrypoint "trap 'kill \$! 2>/dev/null; exit 0' TERM INT; while :; do sleep 3600 & wait \$!; done"
		;;
	esac
	umoci gc --layout "$layout"
	tar -C "$layout" -cf "$work/$name.tar" .
	# rename is atomic, so a reader never sees half a tar.
	mv -f "$work/$name.tar" "$imgdir/$name.tar"
	rm -rf "$work"
}

mkdir -p "$imgdir"
# Not "build_image ... || die": that would switch errexit off inside it.
if [ ! -s "$imgdir/busybox.tar" ]; then build_image busybox busybox >/dev/null; fi
if [ ! -s "$imgdir/pause.tar" ]; then build_image pause pause >/dev/null; fi
exec 9>&-

# --- config -----------------------------------------------------------------

mkdir -p "$DIR"/{root,state,opt,runc,cni/bin,cni/net.d}
# Every path containerd, its CRI plugin and runc would default to under
# /var/lib/containerd, /run/containerd, /opt or /etc is pointed into DIR,
# so tests never touch (or depend on) a containerd of the machine. The CRI
# plugin's own root and state follow root and state below.
cat >"$DIR/config.toml" <<EOF
version = 2
root = "$DIR/root"
state = "$DIR/state"
oom_score = 0
# Snapshotters that cannot work here only add errors to the log.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/opt"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # These machines refuse a negative oom_score_adj even for root; without
    # this every RunPodSandbox fails in runc.
    restrict_oom_score_adj = true
    # Pod network namespaces would otherwise be mounted under /var/run/netns.
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$DIR/cni/bin"
      conf_dir = "$DIR/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          # runc's state, else under /run/containerd/runc.
          Root = "$DIR/runc"
          SystemdCgroup = false
EOF

# --- start ------------------------------------------------------------------

# setsid: a Ctrl-C to the test's process group must not kill containerd
# half-way; containerd-down.sh ends it by its PID.
# CONTAINERD_BIN_DIR, when set, holds another containerd and its runc shim
# (containerd-build.sh's); first on PATH, so containerd starts its shim.
containerd_bin=containerd
if [ -n "${CONTAINERD_BIN_DIR:-}" ]; then
	[ -x "$CONTAINERD_BIN_DIR/containerd" ] && [ -x "$CONTAINERD_BIN_DIR/containerd-shim-runc-v2" ] ||
		die "CONTAINERD_BIN_DIR=$CONTAINERD_BIN_DIR holds no containerd and containerd-shim-runc-v2"
	containerd_bin="$CONTAINERD_BIN_DIR/containerd"
	export PATH="$CONTAINERD_BIN_DIR:$PATH"
fi
setsid "$containerd_bin" --config "$DIR/config.toml" </dev/null >>"$DIR/containerd.log" 2>&1 &
echo $! >"$DIR/containerd.pid"

deadline=$((SECONDS + READY_TIMEOUT_S))
until ctr -a "$SOCK" version >/dev/null 2>&1; do
	kill -0 "$(cat "$DIR/containerd.pid")" 2>/dev/null ||
		die "containerd exited during start-up (log: $DIR/containerd.log)"
	[ "$SECONDS" -lt "$deadline" ] ||
		die "containerd did not answer on $SOCK within ${READY_TIMEOUT_S}s (log: $DIR/containerd.log)"
	sleep 0.1
done

# --base-name, not --index-name: the latter also leaves an import-<date> ref
# whose removal breaks the CRI plugin's image cache until a restart.
for name in busybox pause; do
	if ! ctr -a "$SOCK" -n k8s.io images import --base-name "localhost/$name" "$imgdir/$name.tar" >/dev/null; then
		# A damaged cached tar would fail every later run too: the next
		# one rebuilds it.
		rm -f "$imgdir/$name.tar"
		die "importing $imgdir/$name.tar failed; removed it from the cache"
	fi
done
images="$(ctr -a "$SOCK" -n k8s.io images ls -q)"
for img in "$BUSYBOX_IMAGE" "$PAUSE_IMAGE"; do
	grep -qxF "$img" <<<"$images" || die "image $img is missing after import"
done

started=0
echo "CRI_SOCKET=$SOCK"
echo "CRI_BUSYBOX_IMAGE=$BUSYBOX_IMAGE"
echo "CRI_PAUSE_IMAGE=$PAUSE_IMAGE"
