#!/usr/bin/env bash
# executor-image.sh BINDIR OUT.tar: writes an OCI image of the executor, as
# an OCI layout tar tagged "test", laid out as the Dockerfile lays it out:
#   /usr/local/bin/task-executor          (the entrypoint)
#   /workspace/server -> /usr/local/bin/task-executor
#                                         (where upstream's install recipe
#                                         copies the executor from)
# BINDIR holds `make build`'s task-executor, which must be static.
#
# The base is the busybox image containerd-up.sh builds and caches, not the
# Dockerfile's Debian: nothing can be pulled here, and in sidecar mode tasks
# run in the main container, not in this one. Run containerd-up.sh first.
#
# Import the result into a containerd's CRI namespace with
#   ctr -a SOCK -n k8s.io images import --base-name localhost/task-executor OUT.tar
# which names it localhost/task-executor:test. (--index-name would also leave
# an import-<date> ref behind whose removal breaks the CRI plugin's image
# cache until containerd restarts.)
#
# Everything temporary goes into a directory beside OUT.tar, removed on exit.
set -euo pipefail

die() {
	echo "executor-image: $*" >&2
	exit 1
}

[ $# -eq 2 ] || die "usage: $0 BINDIR OUT.tar"
BIN="$(cd "$1" && pwd -P)" || die "no directory $1"
OUT="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v umoci >/dev/null || die "umoci is missing (containerd-up.sh installs it)"

# ldd fails on a static binary, so its words, not its status, tell. A
# dynamically linked binary fails in a busybox image with a confusing
# "no such file or directory".
is_static() {
	local out
	out="$(LC_ALL=C ldd "$1" 2>&1 || true)"
	[[ "$out" == *"not a dynamic executable"* || "$out" == *"statically linked"* ]]
}

exe="$BIN/task-executor"
[ -f "$exe" ] && [ -x "$exe" ] || die "$exe is missing or not executable"
is_static "$exe" || die "$exe is dynamically linked; build it with CGO_ENABLED=0"

# The cache containerd-up.sh fills: keyed by the busybox binary and the
# recipe number it declares, read from the script so the two cannot differ.
cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/task-executor-images"
recipe="$(sed -n 's/^IMAGE_RECIPE=\([0-9][0-9]*\)$/\1/p' "$here/containerd-up.sh")"
[ -n "$recipe" ] || die "cannot read IMAGE_RECIPE from $here/containerd-up.sh"
[ -x /bin/busybox ] || die "/bin/busybox is missing (containerd-up.sh installs busybox-static)"
base="$cache/$(sha256sum /bin/busybox | cut -d' ' -f1)-r$recipe/busybox.tar"

work="$(mktemp -d "$(dirname "$OUT")/executor-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
layout="$work/layout"
bundle="$work/bundle"
mkdir "$layout"

# containerd-up.sh (re)builds the cache under this lock: read under it too,
# so a tar being replaced is never read half-way.
exec 9>"$cache/.lock"
flock -w 600 9 || die "timed out waiting for the lock on $cache"
[ -s "$base" ] || die "no cached busybox image at $base (run hack/containerd-up.sh first)"
tar -C "$layout" -xf "$base"
exec 9>&-

umoci unpack --image "$layout:latest" "$bundle" >/dev/null
rootfs="$bundle/rootfs"
# 0755 whatever the umask: the executable is its built-in runtimes' plugin,
# and the host refuses plugins others can write to.
install -D -m 0755 "$exe" "$rootfs/usr/local/bin/task-executor"
mkdir -p "$rootfs/workspace"
ln -s /usr/local/bin/task-executor "$rootfs/workspace/server"
umoci repack --image "$layout:latest" "$bundle"
# The busybox image runs sh by default: clear that, or a pod without args
# would run `task-executor sh`.
umoci config --image "$layout:latest" --tag test \
	--clear config.cmd \
	--config.entrypoint /usr/local/bin/task-executor \
	--config.exposedports 5758/tcp
# One tag only, or the import names the busybox base as well.
umoci rm --image "$layout:latest"
umoci gc --layout "$layout"
tar -C "$layout" -cf "$work/image.tar" .
mv -f "$work/image.tar" "$OUT"
