#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz and libFuzzer) once and runs each for a fixed
# budget, starting from its checked-in seed corpus. Any crash, panic, timeout or out-of-memory
# fails the run, with the input that caused it saved under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   scripts/fuzz.sh --build     (only build, e.g. ahead of time while other work runs)
#
# The budget defaults to $NODEPREP_FUZZ_SECS, else 20 s. Needs the nightly toolchain (rustup);
# installs cargo-fuzz when it is missing. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

build_only=false
if [ "${1:-}" = --build ]; then
  build_only=true
  shift
fi
secs=${1:-${NODEPREP_FUZZ_SECS:-20}}
shift || true
case "$secs" in '' | *[!0-9]*)
  echo "scripts/fuzz.sh: the budget must be a number of seconds, not ${secs@Q}" >&2
  exit 2
  ;;
esac

# libFuzzer's instrumentation (-Zsanitizer, sancov) is nightly-only: no nightly is a failure, not
# a skip, so a CI machine without it cannot pass silently.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "scripts/fuzz.sh: the nightly Rust toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz

# Rust code is memory safe, so no AddressSanitizer (docs/fuzzing.md has the measurements):
# libFuzzer still catches panics (overflow checks and debug assertions are on), deadly
# signals, timeouts and memory exhaustion.
# The fuzz crate is a workspace of its own with its own fuzz/target/ (where the binaries are run
# from below): a CARGO_TARGET_DIR meant for the main crate must not send it elsewhere.
unset CARGO_TARGET_DIR
build=(--sanitizer none --debug-assertions)
# NODEPREP_FUZZ_PROFILE=dev: unoptimised targets, built in about a third of the time and run
# several times slower; what CI uses for its short budget (docs/fuzzing.md).
profile=release
if [ "${NODEPREP_FUZZ_PROFILE:-release}" = dev ]; then
  build+=(--dev)
  profile=debug
fi
echo "== cargo fuzz build (all targets)"
start=$(date +%s)
(cd fuzz && cargo +nightly fuzz build "${build[@]}")
echo "fuzz targets built in $(($(date +%s) - start)) s"
$build_only && exit 0

if (($# == 0)); then
  mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
else
  targets=("$@")
fi
bin_dir=fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/$profile
# The corpus a run grows goes to a scratch directory; the seeds are read, never written.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs} s"
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  log=$work/$t.log
  if "$bin_dir/$t" "$work/$t" "fuzz/corpus/$t" \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=16384 \
    -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    # libFuzzer's last status line (`#N DONE cov: X ft: Y corp: Z ...`) and its totals.
    grep -aE '^#[0-9]+' "$log" | tail -1
    grep -aE '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tr -s ' \n' ' '
    echo
  else
    tail -60 "$log" >&2
    artifact=$(grep -oE "(Test unit|artifact) written to [^ ]+" "$log" | tail -1 | sed 's/.* to //')
    echo "scripts/fuzz.sh: $t FAILED; the input: ${artifact:-see the log above}" >&2
    echo "  reproduce: $bin_dir/$t ${artifact:-<input>}" >&2
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "scripts/fuzz.sh: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${secs} s each, no crash"
