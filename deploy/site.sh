#!/usr/bin/env bash
# Entry point of a hospital service (docker-compose.yml): on first start,
# check the certificate the CA job signed against this hospital's own keys
# and the federation CA, and install it; then run the site daemon with the
# given arguments (after the site name).
set -euo pipefail

SITE=${1:?usage: $0 SITE [ARGS…]}
shift
DIR=${CONFIDE_CERTS_DIR:-/certs}
EXCHANGE=${EXCHANGE:-/exchange}

if [[ ! -f $DIR/$SITE.pem ]]; then
  confide-site install-cert --dir "$DIR" --site "$SITE" \
    --cert "$EXCHANGE/issued/$SITE.pem" --ca "$EXCHANGE/ca.pem"
fi
exec confide-site run --site "$SITE" "$@"
