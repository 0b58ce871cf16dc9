#!/usr/bin/env bash
# Builds the test cluster's one binary (see main.go) from the upstream source go.mod pins, once,
# into a cache outside the checkout keyed by everything that goes into it, and prints its path.
# Concurrent callers (parallel tests) wait on a lock and share one build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${NODEPREP_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nodeprep-k8s}"
version=$(grep -o 'k8s.io/kubernetes v[0-9.]*' "$here/go.mod" | head -1 | cut -d' ' -f2)
key=$( (cd "$here" && cat go.mod go.sum ./*.go build.sh && go version) | sha256sum | cut -c1-16)
out="$cache/$key/k8s"
mkdir -p "$cache/$key"
exec 9>"$cache/$key/.lock"
flock 9
if [ ! -x "$out" ]; then
  start=$(date +%s)
  echo "tests/k8s: building Kubernetes $version into $out (cold: many minutes on 2 cores)" >&2
  # The version the components report (a module build has no git tree to take it from).
  minor=${version#v1.}; minor=${minor%%.*}
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  (cd "$here" && go build -trimpath -ldflags="$ldflags" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "tests/k8s: built in $(( $(date +%s) - start )) s" >&2
fi
echo "$out"
