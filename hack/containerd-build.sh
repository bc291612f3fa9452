#!/usr/bin/env bash
# containerd-build.sh: prints a directory holding containerd and
# containerd-shim-runc-v2 of CONTAINERD_VERSION (default below), built from
# the Go module proxy the first time and cached
# (~/.cache/task-executor-containerd/<version>/). Debian 12 ships
# containerd 1.6, which has no CRI container events (GetContainerEvents,
# containerd 1.7 on); this one has them. Give the directory to
# containerd-up.sh as CONTAINERD_BIN_DIR.
set -euo pipefail

VERSION="${CONTAINERD_VERSION:-v2.4.2}"
die() {
	echo "containerd-build: $*" >&2
	exit 1
}
[[ "$VERSION" =~ ^v2\.[0-9]+\.[0-9]+$ ]] || die "CONTAINERD_VERSION $VERSION is not v2.MINOR.PATCH"

cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/task-executor-containerd/$VERSION"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 1800 9 || die "timed out waiting for $cache/.lock"
if [ -x "$cache/containerd" ] && [ -x "$cache/containerd-shim-runc-v2" ]; then
	echo "$cache"
	exit 0
fi
command -v go >/dev/null || die "go is not in PATH"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Static, so that nothing depends on this machine's C library.
if ! GOBIN="$work" CGO_ENABLED=0 GOFLAGS=-mod=mod go install \
	"github.com/containerd/containerd/v2/cmd/containerd@$VERSION" \
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$VERSION" >"$work/build.log" 2>&1; then
	tail -20 "$work/build.log" >&2
	die "go install failed"
fi
mv -f "$work/containerd-shim-runc-v2" "$cache/"
mv -f "$work/containerd" "$cache/"
echo "$cache"
