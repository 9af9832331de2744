#!/bin/bash
# Build kube-apiserver ONCE (Debian's kubernetes source package + the reflect2 patch, via build_apiserver.sh
# beside this file) and cache it outside the repo so every later test run reuses it.
# Usage: build.sh            -> prints the cached binary path
# Env:   GEMMA3_K8S_CACHE  (default ~/.cache/gemma3-launch/k8s)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${GEMMA3_K8S_CACHE:-$HOME/.cache/gemma3-launch/k8s}
RECIPE="$HERE/build_apiserver.sh"
mkdir -p "$CACHE"
# One builder at a time: parallel test sessions wait for the first build instead of starting a second one.
exec 9>"$CACHE/.build.lock"
flock 9
if [ -x "$CACHE/kube-apiserver" ]; then
  # A restored cache on a fresh machine still needs etcd (the recipe installs it only when it builds).
  command -v etcd >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null; }; }
  echo "$CACHE/kube-apiserver"; exit 0
fi
nice -n 10 bash "$RECIPE" "$CACHE" > "$CACHE/build.log" 2>&1 || { echo "build.sh: apiserver build failed, see $CACHE/build.log" >&2; tail -n 20 "$CACHE/build.log" >&2; exit 1; }
echo "$CACHE/kube-apiserver"
