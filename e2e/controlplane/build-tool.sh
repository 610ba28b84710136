#!/usr/bin/env bash
# Builds one test tool from its module in modules/<tool> (the Go module proxy, committed go.sum) into
# ~/.cache/aperag-operator/tools/<tool>-<version>.<go version>/ (override with APERAG_CACHE_DIR) and
# prints the binary's path. A warm cache builds nothing. Tools: promtool.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
tool=${1:?usage: build-tool.sh promtool}
case $tool in
  # Prometheus' build tag remove_all_sd leaves out the cloud service discoveries (AWS, Azure, GCE, ...)
  # that promtool links by default and rule checks never use: a third of the build and half the modules.
  promtool) version=$PROMETHEUS_VERSION pkg=github.com/prometheus/prometheus/cmd/promtool tags=remove_all_sd
    ldflags="-X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION}" ;;
  *) echo "unknown tool $tool" >&2; exit 2 ;;
esac
gover=$(go env GOVERSION)
cache_root=${APERAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/aperag-operator}
bindir=$cache_root/tools/$tool-$version.$gover
mkdir -p "$bindir"
exec 9>"$bindir/.build.lock"
flock 9
if [ ! -x "$bindir/$tool" ]; then
  export GOFLAGS="-mod=readonly -trimpath" GOSUMDB=off CGO_ENABLED=0
  echo "[build-tool] building $tool ($pkg $version)" >&2
  start=$SECONDS
  (cd "$here/modules/$tool" && go build -tags "$tags" -ldflags "-s -w $ldflags" -o "$bindir/$tool.tmp.$$" "$pkg")
  mv "$bindir/$tool.tmp.$$" "$bindir/$tool"
  echo "[build-tool] built $tool in $((SECONDS - start))s" >&2
fi
echo "$bindir/$tool"
