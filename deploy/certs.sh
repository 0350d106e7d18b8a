#!/usr/bin/env bash
# One-shot job of the `certs` service (docker-compose.yml).
#
# 1. Creates the federation CA, the coordinator certificate and an operator
#    certificate in $CA_DIR (the `ca` volume, mounted by this job only).
# 2. Signs each site's certificate request, which the site's own `<site>-keys`
#    job left in $EXCHANGE/requests: the sites' private keys never come here.
#    Certificates go to $EXCHANGE/issued/<site>.pem, with ca.pem beside them.
# 3. Hands the coordinator its files in its own volume:
#      $OUT_DIR/coordinator/  ca.pem coordinator.{pem,key} operators/admin.{pem,key}
# Anything that already exists is kept: re-running never re-keys a federation.
# The CA key never leaves $CA_DIR.
#
# Runs as root only so that it can hand fresh volumes to the unprivileged
# user (uid 10001) the long-running services use.
set -euo pipefail

CA_DIR=${CA_DIR:-/ca}
OUT_DIR=${OUT_DIR:-/out}
EXCHANGE=${EXCHANGE:-/exchange}
FEDERATION=${FEDERATION:-confide-demo}
SITES=${SITES:-hospital-a hospital-b hospital-c}
SUITE=${SUITE:-intl}
OPERATOR=${OPERATOR:-admin}
# Extra names for the coordinator certificate (space-separated), e.g. the
# public DNS name remote sites dial. "coordinator" and "localhost" are built in.
COORDINATOR_NAMES=${COORDINATOR_NAMES:-}
RUN_AS=${RUN_AS:-10001:10001}

if [[ -f $CA_DIR/ca.pem ]]; then
  echo "certs: federation CA exists in $CA_DIR, keeping it"
else
  names=()
  for n in $COORDINATOR_NAMES; do names+=(--name "$n"); done
  confide certs init --dir "$CA_DIR" --federation "$FEDERATION" "${names[@]}"
fi
mkdir -p "$EXCHANGE/issued"
for site in $SITES; do
  if [[ -f $CA_DIR/sites/$site.pem ]]; then
    echo "certs: $site already has a certificate, keeping it"
  else
    req=$EXCHANGE/requests/$site.csr
    [[ -f $req ]] || { echo "certs: no request from $site in $req (its $site-keys job did not run)" >&2; exit 1; }
    confide certs sign --dir "$CA_DIR" --csr "$req" --site "$site" --suite "$SUITE"
  fi
  cp "$CA_DIR/sites/$site.pem" "$EXCHANGE/issued/$site.pem"
done
cp "$CA_DIR/ca.pem" "$EXCHANGE/ca.pem"
chmod -R a+rX "$EXCHANGE"
if [[ ! -f $CA_DIR/operators/$OPERATOR.pem ]]; then
  confide certs issue --dir "$CA_DIR" --operator "$OPERATOR"
fi
# A signed CRL (empty until something is revoked) for the coordinator to
# enforce and serve to the sites; CRLs expire, so it is re-issued each run.
confide certs crl --dir "$CA_DIR"

# install SRC DEST MODE: copy (bash only needs cp), then fix mode.
install_file() {
  cp "$1" "$2"
  chmod "$3" "$2"
}

if [[ -d $OUT_DIR/coordinator ]]; then
  d=$OUT_DIR/coordinator
  mkdir -p "$d/operators"
  install_file "$CA_DIR/ca.pem" "$d/ca.pem" 0644
  install_file "$CA_DIR/coordinator.pem" "$d/coordinator.pem" 0644
  install_file "$CA_DIR/coordinator.key" "$d/coordinator.key" 0600
  install_file "$CA_DIR/crl.pem" "$d/crl.pem" 0644
  install_file "$CA_DIR/operators/$OPERATOR.pem" "$d/operators/$OPERATOR.pem" 0644
  install_file "$CA_DIR/operators/$OPERATOR.key" "$d/operators/$OPERATOR.key" 0600
  chown -R "$RUN_AS" "$d"
  echo "certs: coordinator volume ready"
fi
