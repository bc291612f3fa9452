# procs.sh: helpers the *-down.sh scripts source to end processes by PID.
# WAIT_S (seconds) bounds wait_gone.

# alive PID: true while PID runs. A zombie counts as gone: it runs nothing,
# and its parent (often init) reaps it in its own time.
alive() {
	local stat
	stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
	stat="${stat##*) }"
	[ "${stat%% *}" != Z ]
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# read_pid FILE: the PID in FILE, if it holds one above 1.
read_pid() {
	local pid
	pid="$(cat "$1" 2>/dev/null)" || return 1
	[[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] || return 1
	echo "$pid"
}

# wait_gone PID...: true once none of them is alive, false after WAIT_S.
wait_gone() {
	local deadline=$((SECONDS + WAIT_S)) p left
	while :; do
		left=0
		for p in "$@"; do
			if alive "$p"; then left=1; fi
		done
		[ "$left" -eq 1 ] || return 0
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}
