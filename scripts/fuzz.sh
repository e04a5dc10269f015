#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS each (default 30),
# or only the targets named as arguments. Uses the nightly toolchain when rustup has
# one, else stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags). A crash fails
# the run and leaves its input under fuzz/artifacts/TARGET/; the corpus grows in
# fuzz/corpus/TARGET/ (neither is committed).
set -euo pipefail
cd "$(dirname "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")")"

seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
	cargo=(cargo +nightly fuzz)
else
	export RUSTC_BOOTSTRAP=1
	cargo=(cargo fuzz)
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
	mapfile -t targets < <("${cargo[@]}" list)
fi
"${cargo[@]}" build -O
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for target in "${targets[@]}"; do
	mkdir -p "fuzz/corpus/$target"
	if "${cargo[@]}" run -O "$target" "fuzz/corpus/$target" -- \
		-max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
		echo "fuzz: $target: ${runs:-?} runs in ${seconds} s, no crash"
	else
		echo "fuzz: $target FAILED (the input is in fuzz/artifacts/$target/):" >&2
		grep -E 'panicked|ERROR|SUMMARY|Test unit written|^[[:space:]]+[0-9]+: ' "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
		status=1
	fi
done
exit "$status"
