#!/usr/bin/env bash
# kubelet-build.sh: prints the path of a kubelet binary of KUBELET_VERSION
# (default below), building it from the Go module proxy the first time and
# caching it (~/.cache/task-executor-kubelet/<version>/kubelet). The first
# build takes minutes (about 6 on 2 cores, 2 GB of memory); later calls
# return at once.
#
# `go install k8s.io/kubernetes/cmd/kubelet@v` is refused (the module has
# replace directives), so a wrapper module requires k8s.io/kubernetes and
# replaces every staging module k8s.io/X with k8s.io/X at the matching
# v0.<minor>.<patch>, as kubernetes' own go.mod replaces them with its
# staging directories.
set -euo pipefail

VERSION="${KUBELET_VERSION:-v1.34.2}"
die() {
	echo "kubelet-build: $*" >&2
	exit 1
}
[[ "$VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "KUBELET_VERSION $VERSION is not v1.MINOR.PATCH"
staging="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
minor="${BASH_REMATCH[1]}"

cache="${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/task-executor-kubelet/$VERSION"
bin="$cache/kubelet"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -w 1800 9 || die "timed out waiting for $cache/.lock"
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
command -v go >/dev/null || die "go is not in PATH"

work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
cd "$work"
# kubernetes' go.mod names the staging modules in its replace block.
modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$VERSION.mod"
if [ ! -s "$modfile" ]; then
	GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$VERSION" >/dev/null
fi
[ -s "$modfile" ] || die "cannot read k8s.io/kubernetes@$VERSION's go.mod"
mapfile -t mods < <(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile" | sort -u)
[ ${#mods[@]} -gt 10 ] || die "found only ${#mods[@]} staging modules in $modfile"
{
	echo "module kubeletbuild"
	echo
	echo "go 1.24"
	echo
	echo "require k8s.io/kubernetes $VERSION"
	echo
	echo "replace ("
	for m in "${mods[@]}"; do echo "	$m => $m $staging"; done
	echo ")"
} >go.mod
printf 'package tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' >tools.go
GOFLAGS=-mod=mod go mod tidy >/dev/null 2>"$work/tidy.log" || { tail -20 "$work/tidy.log" >&2; die "go mod tidy failed"; }
ver="k8s.io/component-base/version"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -o "$work/kubelet" \
	-ldflags "-s -w -X $ver.gitVersion=$VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$minor" \
	k8s.io/kubernetes/cmd/kubelet 2>"$work/build.log" || { tail -20 "$work/build.log" >&2; die "go build failed"; }
mv -f "$work/kubelet" "$bin"
echo "$bin"
