#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok,
# helm) from the Go module proxy into a cache outside the repo, keyed by component version and Go
# version, so a second run builds nothing. Prints the bin directory on stdout.
#
# `build.sh node` also builds the real node (localcluster.py --real-node): the kubelet (same
# kubernetes version, so the same directory), containerd v2 with its runc shim and ctr (in
# containerd-<version>/, so a containerd version change builds a new one) and the pause binary of the
# sandbox image (in pause-<hash of its source>/).
#
# `build.sh keda` builds KEDA's operator and metrics API server instead (the autoscaling tests and the
# demo start them on demand), into a directory of their own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
gover=$(go env GOVERSION)
cache_root=${APERAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aperag-operator}
target=${1:-controlplane}
if [ "$target" = keda ]; then
  bindir=$cache_root/keda/keda-$KEDA_VERSION.$gover/bin
else
  bindir=$cache_root/controlplane/k8s-$KUBERNETES_VERSION.etcd-$ETCD_VERSION.kwok-$KWOK_VERSION.helm-$HELM_VERSION.$gover/bin
fi
mkdir -p "$bindir"
# Concurrent runs (two test sessions, a test and the demo) wait for each other instead of racing.
exec 9>"$bindir/.build.lock"
flock 9

# The committed go.sum files pin every module; no checksum-database look-ups are needed.
export GOFLAGS="-mod=readonly -trimpath" GOSUMDB=off CGO_ENABLED=0

log() { echo "[build-controlplane] $*" >&2; }

build() { # module-dir (under e2e/controlplane) output package [ldflags] [tags]
  local dir=$1 out=$2 pkg=$3 ldflags=${4:-} tags=${5:-}
  if [ -x "$bindir/$out" ]; then return; fi
  log "building $out ($pkg)"
  local start=$SECONDS
  mkdir -p "$(dirname "$bindir/$out")"
  (cd "$here/$dir" && go build -tags "$tags" -ldflags "-s -w $ldflags" -o "$bindir/$out.tmp.$$" "$pkg")
  mv "$bindir/$out.tmp.$$" "$bindir/$out"
  log "built $out in $((SECONDS - start))s"
}

k8s_ldflags() {
  local v=$KUBERNETES_VERSION major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local flags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

if [ "$target" = keda ]; then
  kv="-X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION"
  build modules/keda keda-operator github.com/kedacore/keda/v2/cmd/operator "$kv"
  build modules/keda keda-adapter github.com/kedacore/keda/v2/cmd/adapter "$kv"
  echo "$bindir"
  exit 0
fi

build modules/etcd etcd go.etcd.io/etcd/server/v3
ldf=$(k8s_ldflags)
for component in kube-apiserver kube-controller-manager kube-scheduler; do
  build modules/kubernetes "$component" "k8s.io/kubernetes/cmd/$component" "$ldf" "selinux,notest"
done
build modules/kwok kwok sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=$KUBERNETES_VERSION"
build modules/helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

if [ "${1:-}" = node ]; then
  build modules/kubernetes kubelet k8s.io/kubernetes/cmd/kubelet "$ldf" "selinux,notest"
  # Static binaries (no cgo): the btrfs, devmapper and zfs snapshotters are left out (overlayfs is used).
  for component in containerd containerd-shim-runc-v2 ctr; do
    build modules/containerd "containerd-$CONTAINERD_VERSION/$component" "github.com/containerd/containerd/v2/cmd/$component" \
      "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" "no_btrfs,no_devmapper,no_zfs"
  done
  # Keyed by the source's content (realnode.node_binaries computes the same name).
  pause_hash=$(cat "$here/pause/go.mod" "$here/pause/main.go" | sha256sum | cut -c1-12)
  build pause "pause-$pause_hash/pause" aperag.io/controlplane/pause
fi
echo "$bindir"
