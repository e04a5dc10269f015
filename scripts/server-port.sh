# Sourced by scripts that start a server in the background: `server_port LOG NAME`
# waits up to 10 s for the server's "listening on" line in LOG and prints its port;
# if none comes, it prints the log to stderr, named after the calling step, and fails.
server_port() {
	local log=$1 name=$2 port=""
	for _ in $(seq 1 100); do
		port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
		[ -n "$port" ] && break
		sleep 0.1
	done
	if [ -z "$port" ]; then
		echo "$name: the server did not start:" >&2
		cat "$log" >&2
		return 1
	fi
	echo "$port"
}
