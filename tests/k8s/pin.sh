#!/usr/bin/env bash
# Regenerates go.mod's replace block from the pinned release's own go.mod: k8s.io/kubernetes
# replaces its staging modules with local paths, which a dependent module ignores, so each one
# is pinned here to the matching published v0.x.y. Run after changing K8S_VERSION.
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION=${K8S_VERSION:-v1.37.2}
staging="v0.${K8S_VERSION#v1.}"
mod=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
{
  echo "replace ("
  # The two sample modules are not published; nothing here imports them.
  grep '=> ./staging/src/' "$mod" | awk '{print $1}' | grep -v 'k8s.io/sample-' |
    while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
  echo ")"
} > replace.txt
awk '/^\/\/ BEGIN replace/{print; while ((getline line < "replace.txt") > 0) print line; skip=1; next}
     /^\/\/ END replace/{skip=0} !skip' go.mod > go.mod.new
mv go.mod.new go.mod
rm replace.txt
