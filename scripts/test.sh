#!/usr/bin/env bash
# Sets up a fresh Debian machine for nodeprep's tests and runs them all:
# formatting, lints, the test suite (unit, fixture trees, lspci cross-checks, real host)
# and the benchmarks, which print their figures.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: pciutils (lspci, the cross-check reference), iproute2, util-linux.
missing=()
command -v lspci >/dev/null 2>&1 || missing+=(pciutils)
# iproute2 (ip netns, for the rtnetlink reader's test); util-linux has losetup and taskset.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v losetup >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: need ${missing[*]}: run as root or install them" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The real Kubernetes components the end-to-end tests run against (tests/k8s/: the release its
# go.mod pins, built from source with the Go toolchain, cached outside the checkout).
# Built in the background while cargo builds: both have long serial stretches (linking) in which
# one of two cores would idle.
command -v go >/dev/null 2>&1 || { echo "scripts/test.sh: the Go toolchain (go) is needed to build Kubernetes for the tests" >&2; exit 2; }
k8s_log=$(mktemp)
echo "== Kubernetes for the tests: tests/k8s/build.sh in the background (log: $k8s_log)"
k8s_start=$(date +%s)
bash tests/k8s/build.sh >"$k8s_log" 2>&1 &
k8s_pid=$!
# A step that fails before the wait below must not leave the Go build running.
trap 'kill "$k8s_pid" 2>/dev/null || true' EXIT

command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest

step() { echo "== $* ($(( $(date +%s) - ci_start )) s into the run)"; }
ci_start=$(date +%s)

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
step "build the tests"
cargo test --locked --no-run

# The benchmarks CI runs, then the fuzz targets, are built in the background at idle priority
# (SCHED_IDLE): they take only the CPU the tests leave, chiefly while the serial real-cluster and
# real-kernel tests wait on their components; the fuzz targets then build while the benchmarks
# run. The benchmarks have their own profile, so their own target directory: the tests' cargo
# runs are never blocked on its lock.
benches=(scan bind deviceplugin agent kubelet scale dra)
bench_target=${CARGO_TARGET_DIR:-target}/bench
bg_log=$(mktemp)
benches_built=$(mktemp -u)
step "building the benchmarks, then the fuzz targets, in the background (log: $bg_log)"
(
  CARGO_TARGET_DIR=$bench_target chrt --idle 0 nice -n 19 cargo bench --locked --no-run "${benches[@]/#/--bench=}"
  echo "benchmarks built $(( $(date +%s) - ci_start )) s into the run"
  touch "$benches_built"
  NODEPREP_FUZZ_PROFILE=dev chrt --idle 0 nice -n 19 bash scripts/fuzz.sh --build
  echo "fuzz targets built $(( $(date +%s) - ci_start )) s into the run"
) >"$bg_log" 2>&1 &
bg_pid=$!
trap 'kill "$k8s_pid" "$bg_pid" 2>/dev/null || true' EXIT

step "waiting for the Kubernetes build"
if ! wait "$k8s_pid"; then
  cat "$k8s_log" >&2
  echo "scripts/test.sh: building Kubernetes failed" >&2
  exit 1
fi
cat "$k8s_log"
echo "tests/k8s ready $(( $(date +%s) - k8s_start )) s after it started"
step "tests"
cargo nextest run --locked --no-fail-fast
step "waiting for the benchmarks' build"
while [ ! -e "$benches_built" ]; do
  if ! kill -0 "$bg_pid" 2>/dev/null; then
    cat "$bg_log" >&2
    echo "scripts/test.sh: building the benchmarks failed" >&2
    exit 1
  fi
  sleep 2
done
rm -f "$benches_built"

step "benchmarks"
export CARGO_TARGET_DIR=$bench_target
cargo bench --locked --bench scan
cargo bench --locked --bench bind
cargo bench --locked --bench deviceplugin
cargo bench --locked --bench agent
cargo bench --locked --bench kubelet
# 100 agents against one API server; CI idles them 60 s (the README quotes a 5-minute run).
NODEPREP_SCALE_IDLE_SECS=${NODEPREP_SCALE_IDLE_SECS:-60} cargo bench --locked --bench scale
# DRA: Prepare with the bind (VM) and without it (fixture); uevent to ResourceSlice and idle
# writes on the real cluster (CI idles 60 s; the README quotes a 5-minute run).
NODEPREP_DRA_IDLE_SECS=${NODEPREP_DRA_IDLE_SECS:-60} cargo bench --locked --bench dra
# The chaos soak's 200 rounds (`cargo bench --bench soak`, about 17 minutes) are not run here:
# its short version is the test tests/real_soak.rs.

step "waiting for the fuzz targets' build"
if ! wait "$bg_pid"; then
  cat "$bg_log" >&2
  echo "scripts/test.sh: building the fuzz targets failed" >&2
  exit 1
fi
grep -E "built .* into the run" "$bg_log"
step "fuzzing: every target for a fixed budget (docs/fuzzing.md)"
# Unoptimised targets (NODEPREP_FUZZ_PROFILE=dev): a third of the build time; the long runs in
# docs/fuzzing.md use the optimised build.
NODEPREP_FUZZ_PROFILE=dev NODEPREP_FUZZ_SECS=${NODEPREP_FUZZ_SECS:-10} bash scripts/fuzz.sh
step "done"
