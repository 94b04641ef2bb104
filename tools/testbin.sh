#!/usr/bin/env bash
# Builds (or reuses) the binaries of the integration tier from the Go module proxy:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet  (k8s.io/kubernetes)
#   etcd                                                              (go.etcd.io/etcd/server/v3)
#   kwok                                                              (sigs.k8s.io/kwok)
#   helm                                                              (helm.sh/helm/v3)
# Binaries are cached outside the repository, keyed by version, so a warm run costs nothing.
# Prints the directory holding all binaries (one line, on stdout) when done; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/versions.env
. "$here/versions.env"

cache=${PINSERVE_CACHE:-$HOME/.cache/pinserve}
bin_root="$cache/bin"
src_root="$cache/src"
out="$bin_root/current-${KUBERNETES_VERSION}-${ETCD_VERSION}-${KWOK_VERSION}-${HELM_VERSION}"
mkdir -p "$bin_root" "$src_root" "$out"

log() { printf '[testbin %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "go is not installed; install Go >= 1.24 (apt-get install golang or the toolchain)"; exit 1; }

export GOFLAGS=${GOFLAGS:--buildvcs=false}
export CGO_ENABLED=0

# The checksum database is reached through the module proxy. When it cannot be
# reached, use the documented escape hatch (GONOSUMDB/GOSUMDB=off) instead of
# failing deep inside `go mod tidy`.
check_sumdb() {
  [ -n "${GOSUMDB:-}" ] && [ "${GOSUMDB}" = off ] && return 0
  local probe; probe=$(mktemp -d)
  if ! (cd "$probe" && GOFLAGS=-mod=mod timeout 60 go mod download -x golang.org/x/text@v0.14.0 >/dev/null 2>&1); then
    log "the Go checksum database is unreachable; continuing with GOSUMDB=off (go help module-auth)"
    export GOSUMDB=off
  fi
  rm -rf "$probe"
}

k8s_minor_tag() { # v1.34.4 -> v0.34.4 (the tag of the staging modules)
  echo "v0.${1#v1.}"
}

build_kubernetes() {
  local ver=$KUBERNETES_VERSION dir="$bin_root/kubernetes-$KUBERNETES_VERSION"
  local want=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet)
  local missing=0 b
  for b in "${want[@]}"; do [ -x "$dir/$b" ] || missing=1; done
  if [ $missing = 0 ]; then log "kubernetes $ver: cached in $dir"; link_all "$dir"; return; fi
  log "kubernetes $ver: building ${want[*]} (cold: tens of minutes on 2 cores)"
  local mod="$src_root/kubernetes-$ver"
  mkdir -p "$mod" "$dir"
  (
    cd "$mod"
    go mod download -json "k8s.io/kubernetes@$ver" >/dev/null
    local gomod; gomod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$ver.mod
    local staging; staging=$(k8s_minor_tag "$ver")
    {
      echo "module pinserve.local/testbin/kubernetes"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $ver"
      echo
      # k8s.io/kubernetes replaces its staging modules with ./staging paths, which
      # is why `go install k8s.io/kubernetes/...@ver` refuses; map each to its tag.
      grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" |
        awk -v tag="$staging" '{print "replace " $1 " => " $1 " " tag}'
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
    log "kubernetes $ver: resolving modules"
    go mod tidy >&2
    local minor=${ver#v1.}; minor=${minor%%.*}
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$ver -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
    ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$ver -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
    for b in "${want[@]}"; do
      if [ -x "$dir/$b" ]; then continue; fi
      log "kubernetes $ver: go build $b"
      go build -trimpath -ldflags "$ld" -o "$dir/$b.tmp" "k8s.io/kubernetes/cmd/$b" >&2
      mv "$dir/$b.tmp" "$dir/$b"
    done
  )
  link_all "$dir"
}

build_etcd() {
  local ver=$ETCD_VERSION dir="$bin_root/etcd-$ETCD_VERSION"
  if [ -x "$dir/etcd" ]; then log "etcd $ver: cached"; link_all "$dir"; return; fi
  log "etcd $ver: building"
  local mod="$src_root/etcd-$ver"
  mkdir -p "$mod" "$dir"
  if (
    cd "$mod"
    printf 'module pinserve.local/testbin/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ver" > go.mod
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w" -o "$dir/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$dir/etcd.tmp" "$dir/etcd"
  ); then link_all "$dir"; return; fi
  log "etcd $ver: build failed; falling back to Debian's etcd-server"
  if ! command -v etcd >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server) >&2 || true
  fi
  if [ -x /usr/bin/etcd ]; then ln -sf /usr/bin/etcd "$out/etcd"; else log "no etcd available"; exit 1; fi
}

go_install() { # name module-path version
  local name=$1 pkg=$2 ver=$3 dir="$bin_root/$1-$3"
  if [ -x "$dir/$name" ]; then log "$name $ver: cached"; link_all "$dir"; return; fi
  log "$name $ver: go install $pkg@$ver"
  mkdir -p "$dir"
  GOBIN="$dir" go install -trimpath -ldflags "-s -w" "$pkg@$ver" >&2
  link_all "$dir"
}

link_all() { local f; for f in "$1"/*; do [ -x "$f" ] && ln -sf "$f" "$out/$(basename "$f")"; done; return 0; }

# Everything runs from main, so that editing this file while a build runs cannot derail it.
main() {
  if [ "${1:-}" = kind ]; then
    # kind is only needed where Docker runs (make demo, e2e): built on demand.
    check_sumdb
    go_install kind sigs.k8s.io/kind "$KIND_VERSION"
    echo "$out"
    exit 0
  fi

  check_sumdb
  build_etcd
  go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
  go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
  build_kubernetes
  log "ready: $out"
  echo "$out"
}

main "$@"
exit $?
