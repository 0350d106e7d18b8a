#!/usr/bin/env bash
# One-shot job of a `<site>-keys` service (docker-compose.yml): this
# hospital makes its own TLS key, long-term signing key and certificate
# request in its own volume ($DIR, mounted by this job and the hospital
# only), and puts only the request into the shared exchange volume for the
# CA job. Existing keys are kept: re-running never re-keys a site.
#
# Runs as root only so that it can hand a fresh volume to the unprivileged
# user (uid 10001) the hospital service uses.
set -euo pipefail

SITE=${1:?usage: $0 SITE [ARGS…]}
shift
SUITE=${SUITE:-intl}
DIR=${DIR:-/certs}
EXCHANGE=${EXCHANGE:-/exchange}
RUN_AS=${RUN_AS:-10001:10001}

if [[ -f $DIR/$SITE.key ]]; then
  echo "$SITE: keys exist in $DIR, keeping them"
else
  confide-site init --dir "$DIR" --site "$SITE" --suite "$SUITE"
fi
mkdir -p "$EXCHANGE/requests"
cp "$DIR/$SITE.csr" "$EXCHANGE/requests/$SITE.csr"
chmod 0644 "$EXCHANGE/requests/$SITE.csr"
chown -R "$RUN_AS" "$DIR"
chmod 0700 "$DIR"
echo "$SITE: request in $EXCHANGE/requests/$SITE.csr; private keys stay in $DIR"
