#!/usr/bin/env bash
# kubelet-up.sh DIR SOCK: starts a real kubelet (hack/kubelet-build.sh),
# standalone (no API server: static pods from DIR/manifests), on the CRI
# runtime at SOCK (containerd-up.sh's), with everything it writes under DIR.
#
# Touching nothing of the machine: the kubelet runs in a mount namespace of
# its own (its root directory, which it makes a shared mount, and the
# mounts of its volumes stay there) in which the kernel settings it would
# rewrite (vm.overcommit_memory, kernel.panic, ...) are small files bound
# over their /proc/sys entries; its cgroups are under a root of its own
# (/<name> in every hierarchy); it listens on 127.0.0.1 only, on ports
# below the ephemeral range.
#
# On success it prints, on stdout:
#   KUBELET_PID=<pid of the kubelet>
#   KUBELET_MANIFESTS=DIR/manifests   (static pods: drop a file in, remove it)
#   KUBELET_HEALTHZ=http://127.0.0.1:<port>/healthz
#   KUBELET_ROOT=DIR/root
#   KUBELET_CGROUP_ROOT=/<name>
#   KUBELET_POD_LOGS=DIR/pods-logs
# kubelet-down.sh DIR undoes all of it. DIR/start.sh starts the kubelet
# again after it was stopped (SIGTERM by its PID), as a node's kubelet
# restarts.
set -euo pipefail
set -E

READY_TIMEOUT_S=60
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
	echo "kubelet-up: $*" >&2
	exit 1
}
[ $# -eq 2 ] || die "usage: $0 DIR CRI_SOCKET"
[ "$(id -u)" -eq 0 ] || die "must run as root; running as uid $(id -u)"
[ -S "$2" ] || die "$2 is not a socket"
mkdir -p "$1"
DIR="$(cd "$1" && pwd -P)"
SOCK="$2"
if [ ! -e "$DIR/.kubelet-test-env" ] && [ -n "$(ls -A "$DIR")" ]; then
	die "$DIR is not empty and was not made by this script; refusing to use it"
fi
: >"$DIR/.kubelet-test-env"
trap 'rc=$?; if [ $rc -ne 0 ]; then [ -s "$DIR/kubelet.log" ] && tail -n 30 "$DIR/kubelet.log" >&2; "$here/kubelet-down.sh" "$DIR" >&2 || true; fi; exit $rc' EXIT

kubelet="$("$here/kubelet-build.sh")" || die "cannot build the kubelet"

# Ports below the ephemeral range (32768 on), where nothing else binds by
# chance: a free pair, found by trying.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		port_free "$p" && { echo "$p"; return; }
	done
	die "no free port"
}
PORT="$(pick_port)"
HEALTHZ_PORT="$(pick_port)"

# A cgroup root of its own in every hierarchy (cgroup v1 and v2): the
# kubelet makes its kubepods tree below it and removes nothing else.
name="kubelet-test-$(basename "$DIR")"
CGROUP_ROOT="/$name"
echo "$CGROUP_ROOT" >"$DIR/cgroup-root"
for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
	[ -e "$h/cgroup.procs" ] || continue
	mkdir -p "$h$name"
	# cpuset needs its CPUs and memory nodes before anything can join.
	for f in cpuset.cpus cpuset.mems; do
		[ -e "$h$f" ] && [ -e "$h$name/$f" ] && cat "$h$f" >"$h$name/$f"
	done
done
# On cgroup v2 the kubelet needs the controllers enabled below its root.
if [ -e /sys/fs/cgroup/cgroup.subtree_control ] && [ ! -d /sys/fs/cgroup/memory ]; then
	for c in $(cat "/sys/fs/cgroup/$name/cgroup.controllers"); do
		echo "+$c" >"/sys/fs/cgroup/$name/cgroup.subtree_control" 2>/dev/null || true
	done
fi

mkdir -p "$DIR"/{root,manifests,pods-logs,volume-plugins,sysctl}
cat >"$DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
staticPodPath: $DIR/manifests
fileCheckFrequency: 1s
syncFrequency: 5s
address: 127.0.0.1
port: $PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $HEALTHZ_PORT
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
makeIPTablesUtilChains: false
oomScoreAdj: 0
protectKernelDefaults: false
podLogsDir: $DIR/pods-logs
volumePluginDir: $DIR/volume-plugins
resolvConf: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
evictionPressureTransitionPeriod: 5s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF

# The kernel settings the kubelet writes, as files of their own.
binds=()
for key in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
	[ -e "/proc/sys/$key" ] || continue
	f="$DIR/sysctl/${key//\//.}"
	cat "/proc/sys/$key" >"$f"
	binds+=("mount --bind '$f' '/proc/sys/$key'")
done
inner="$(printf '%s && ' "${binds[@]}")exec '$kubelet' --config='$DIR/config.yaml' --root-dir='$DIR/root' --hostname-override=kubelet-test --v=2"

# DIR/start.sh starts the kubelet and waits until it answers; it is kept
# to start the kubelet again after a stop, as a node's kubelet restarts.
# setsid: a Ctrl-C to the test must not kill it half-way; kubelet-down.sh
# ends it by its PID. unshare execs the shell, which execs the kubelet:
# the PID is the kubelet's.
{
	echo '#!/usr/bin/env bash'
	echo 'set -euo pipefail'
	printf 'setsid unshare --mount --propagation private sh -c %q </dev/null >>%q 2>&1 &\n' "$inner" "$DIR/kubelet.log"
	printf 'echo $! >%q\n' "$DIR/kubelet.pid"
	printf 'deadline=$((SECONDS + %d))\n' "$READY_TIMEOUT_S"
	printf 'until curl -sf %q >/dev/null 2>&1; do\n' "http://127.0.0.1:$HEALTHZ_PORT/healthz"
	printf '\tkill -0 "$(cat %q)" 2>/dev/null || { echo "kubelet: exited during start-up (log: %s)" >&2; exit 1; }\n' "$DIR/kubelet.pid" "$DIR/kubelet.log"
	printf '\t[ "$SECONDS" -lt "$deadline" ] || { echo "kubelet: no answer on /healthz (log: %s)" >&2; exit 1; }\n' "$DIR/kubelet.log"
	echo '	sleep 0.2'
	echo 'done'
} >"$DIR/start.sh"
bash "$DIR/start.sh" || die "the kubelet did not start"

trap - EXIT
echo "KUBELET_PID=$(cat "$DIR/kubelet.pid")"
echo "KUBELET_MANIFESTS=$DIR/manifests"
echo "KUBELET_HEALTHZ=http://127.0.0.1:$HEALTHZ_PORT/healthz"
echo "KUBELET_ROOT=$DIR/root"
echo "KUBELET_CGROUP_ROOT=$CGROUP_ROOT"
echo "KUBELET_POD_LOGS=$DIR/pods-logs"
