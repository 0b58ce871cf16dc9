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

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== build the tests and benchmarks"
cargo test --locked --no-run
cargo bench --locked --no-run
echo "== waiting for the Kubernetes build"
if ! wait "$k8s_pid"; then
  cat "$k8s_log" >&2
  echo "scripts/test.sh: building Kubernetes failed" >&2
  exit 1
fi
cat "$k8s_log"
echo "tests/k8s ready $(( $(date +%s) - k8s_start )) s after it started"
echo "== tests"
cargo nextest run --locked --no-fail-fast
echo "== benchmarks"
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
