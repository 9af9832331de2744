#!/bin/bash
# Upstream: the gemma3-launch shared testbed recipe (testbeds/k8s/build_apiserver.sh), copied here so the tier
# reads nothing outside the repository; the Kubernetes source itself is Debian 12's `kubernetes` package 1.20.2.
# Build a REAL kube-apiserver (v1.20.2) from Debian 12's own `kubernetes` source package
# (Debian's archive only), for tests that must talk to a live Kubernetes API. ~4-7 min on 2 cores, ~2 GB disk.
# Usage: build_apiserver.sh OUT_DIR   -> OUT_DIR/kube-apiserver
# Go >= 1.18 breaks the vendored modern-go/reflect2 v1.0.1 (the server dies with "fatal error: fault" on
# some CR creates); reflect2-go118.patch beside this file fixes it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd); OUT=$(mkdir -p "${1:?OUT_DIR}" && cd "$1" && pwd)
[ -x "$OUT/kube-apiserver" ] && { echo "$OUT/kube-apiserver (cached)"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
  # source packages come from the same Debian archive the machine already uses: copy its first stanza as deb-src
  awk 'BEGIN{RS="";ORS="\n\n"} NR==1{sub(/Types: deb/,"Types: deb-src"); sub(/Suites: [^\n]*/,"Suites: bookworm"); print}' \
    /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/debian-src.sources
  apt-get update -qq
fi
command -v go >/dev/null && command -v etcd >/dev/null || apt-get install -y -qq --no-install-recommends golang-go make rsync jq etcd-server etcd-client >/dev/null
W=$(mktemp -d); cd "$W"
apt-get source --download-only kubernetes >/dev/null
tar xzf kubernetes_*.orig.tar.gz && cd kubernetes-1.20.2
patch -p0 -d vendor/github.com/modern-go/reflect2 < "$HERE/reflect2-go118.patch"
mkdir -p .go/src/k8s.io && ln -sfn ../../.. .go/src/k8s.io/kubernetes   # GOPATH layout as debian/rules does
env GOPATH=$PWD/.go CGO_ENABLED=0 HOME=$W make WHAT=cmd/kube-apiserver >/dev/null
cp _output/bin/kube-apiserver "$OUT/"; cd /; rm -rf "$W"; echo "$OUT/kube-apiserver"
