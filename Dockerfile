# Confide: one image with both binaries, `confide` (coordinator CLI) and
# `confide-site` (participant daemon), running as the unprivileged user
# `confide` (uid 10001).
#
#   docker build -t confide:local .
#   docker build --build-arg BUILDER_IMAGE=mirror.example.org/rust:1.95-bookworm \
#                --build-arg RUNTIME_IMAGE=mirror.example.org/debian:bookworm-slim -t confide:local .
#
# Without a registry, deploy/build-offline-image.sh produces an image with the
# same name and the same runtime contract from binaries built on the host.
# Plain Dockerfile syntax (no BuildKit-only features), so the legacy builder
# and docker-compose v1 build it too.

# The toolchain this project's CI builds with (workspace MSRV: 1.89); both
# stages on the same Debian release, so the binaries find the glibc they were
# linked against.
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin confide --bin confide-site \
 && mkdir -p /out \
 && install -m 0755 -s target/release/confide target/release/confide-site /out/

FROM ${RUNTIME_IMAGE} AS runtime
# bash (part of the base image) runs the compose healthcheck and the certs job;
# the CA certificates are for object storage over HTTPS (S3, OBS, OSS).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 confide \
 && useradd --system --uid 10001 --gid confide --home-dir /var/lib/confide --shell /usr/sbin/nologin confide \
 && mkdir -p /var/lib/confide/checkpoints /certs /data \
 && chown -R confide:confide /var/lib/confide /certs /data
COPY --from=builder /out/confide /out/confide-site /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/confide
# A fixed mmap threshold: large vectors (uploads, models) go back to the
# system when freed instead of fragmenting glibc's heaps (docs/performance.md).
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072
EXPOSE 7443
LABEL org.opencontainers.image.title="confide" \
      org.opencontainers.image.description="Confide federated-learning coordinator and site daemon" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/confide-fl/confide"
CMD ["confide", "--help"]
