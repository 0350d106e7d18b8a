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
#
# Needs: cargo, docker, ldd, tar (host is Linux with glibc; the host's
# libraries go into the image, so build and run on the same architecture).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
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

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/confide-rootfs.XXXXXX")
cleanup() { rm -rf "$STAGE"; }
trap cleanup EXIT
R=$STAGE/rootfs
mkdir -p "$R"/{usr/bin,usr/local/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc,tmp,root,proc,sys,dev,data,certs}
mkdir -p "$R/var/lib/confide/checkpoints"
# Debian's merged-/usr layout, so the loader and library paths match the host's.
ln -s usr/bin "$R/bin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
chmod 1777 "$R/tmp"
chmod 0700 "$R/root"

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

# Shared libraries: everything ldd reports, copied (dereferenced) to the same
# path under /usr (the image's /lib and /lib64 point there).
copy_lib() {
  local src=$1 rel
  rel=${src#/usr}
  rel=${rel#/}
  local dst=$R/usr/$rel
  [[ -e $dst ]] && return 0
  mkdir -p "$(dirname "$dst")"
  cp -L "$src" "$dst"
}
for exe in "$R"/usr/local/bin/* "$R"/usr/bin/*; do
  [[ -L $exe ]] && continue
  while read -r lib; do
    [[ -n $lib ]] && copy_lib "$lib"
  done < <(ldd "$exe" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}')
done

cat >"$R/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/bash
confide:x:$UID_GID:$UID_GID:Confide:/var/lib/confide:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$R/etc/group" <<GROUP
root:x:0:
confide:x:$UID_GID:
nogroup:x:65534:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
: >"$R/etc/hosts"
: >"$R/etc/resolv.conf"
: >"$R/etc/hostname"

# Everything root-owned except the directories the unprivileged user writes
# (fresh named volumes copy the owner of their mount point from the image).
TAR=$STAGE/rootfs.tar
OWNED=(./var/lib/confide ./var/lib/confide/checkpoints ./certs ./data)
(cd "$R" && tar --numeric-owner --owner=0 --group=0 --exclude=./var/lib/confide --exclude=./certs --exclude=./data -cf "$TAR" .)
(cd "$R" && tar --numeric-owner --owner=$UID_GID --group=$UID_GID --no-recursion -rf "$TAR" "${OWNED[@]}")

VERSION=$("$R/usr/local/bin/confide" --version | awk '{print $2}')
echo "offline image: importing $(du -h "$TAR" | cut -f1) root filesystem as $IMAGE (confide $VERSION)"
OLD_ID=$(docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)
docker import \
  --change "USER $UID_GID:$UID_GID" \
  --change "WORKDIR /var/lib/confide" \
  --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
  --change "EXPOSE 7443" \
  --change "LABEL org.opencontainers.image.title=confide org.opencontainers.image.version=$VERSION org.opencontainers.image.description=offline-build" \
  --change 'CMD ["confide", "--help"]' \
  "$TAR" "$IMAGE" >/dev/null
# The previous build under this tag, now untagged, is garbage (kept if in use).
NEW_ID=$(docker image inspect "$IMAGE" --format '{{.Id}}')
if [[ -n $OLD_ID && $OLD_ID != "$NEW_ID" ]]; then
  docker rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
docker run --rm "$IMAGE" confide --version >/dev/null
docker run --rm "$IMAGE" confide-site --version >/dev/null
SIZE=$(docker image inspect "$IMAGE" --format '{{.Size}}')
echo "offline image: $IMAGE ready, $((SIZE / 1024 / 1024)) MiB ($SIZE bytes)"
