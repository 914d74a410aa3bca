#!/usr/bin/env bash
# build.sh builds the real Kubernetes and etcd binaries that the Kubernetes-mode
# tests and benchmark run (kube-apiserver, kube-proxy, kubectl, etcd), from the
# Go module proxy, into a cache outside the repository keyed by version, so
# only the first run on a machine pays (about 6 minutes on 2 cores).
#
# Usage: build.sh [cache-root]   (default $WEFT_KUBE_CACHE or /var/cache/weft-kube)
# Prints the directory that holds the binaries.
set -euo pipefail
cd "$(dirname "$0")"

K8S_VERSION=v1.37.2
ETCD_VERSION=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
root=${1:-${WEFT_KUBE_CACHE:-/var/cache/weft-kube}}
dir=$root/$K8S_VERSION-etcd$ETCD_VERSION
mkdir -p "$dir"

# kubectl refuses a server whose version it cannot parse; the version is
# normally stamped by Kubernetes' own build scripts.
cb=k8s.io/component-base/version
cg=k8s.io/client-go/pkg/version
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8sflags="-s -w"
for p in $cb $cg; do
	k8sflags="$k8sflags -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
	k8sflags="$k8sflags -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
etcdflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=weft-tools"

build() { # name package ldflags
	[ -x "$dir/$1" ] && return 0
	echo "building $1 into $dir (once per machine)" >&2
	CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$3" -o "$dir/$1.tmp" "$2"
	mv "$dir/$1.tmp" "$dir/$1"
}
build etcd go.etcd.io/etcd/server/v3 "$etcdflags"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$k8sflags"
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$k8sflags"
build kubectl k8s.io/kubernetes/cmd/kubectl "$k8sflags"
echo "$dir"
