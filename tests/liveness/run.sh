#!/usr/bin/env bash
# Dead sites noticed in seconds, with real processes: a coordinator
# (`confide serve`) and N `confide-site` processes over mutual TLS on
# loopback, secure aggregation. In training round $KILL_ROUND, as soon as the
# coordinator logs that share-keys closed, $KILL of the sites are killed with
# SIGKILL. The round must complete with the others, and the script checks,
# from the transcript the coordinator wrote:
#   * the killed sites, and only they, are dropped at masked-input;
#   * every other site is a survivor, and the round succeeded;
#   * the round took at most reconnect_grace_secs + the slowest round
#     without a dropout + $SLACK seconds (not the stage deadline, which is
#     set far above).
# It prints one line per round (duration, dropped) and exits 0 on success.
#
#   tests/liveness/run.sh                      # 100 sites, 10 killed
#   SITES=20 KILL=2 tests/liveness/run.sh      # smaller
#   HIDDEN=1000 tests/liveness/run.sh          # a wider MLP (default 64 units)
#   LIVENESS_BIN_DIR=target/debug tests/liveness/run.sh   # other binaries
#
# Binaries: $LIVENESS_BIN_DIR, else target/release (built if missing).
# Always kills what it started and removes its directory (trap).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
T0=$(date +%s)

SITES=${SITES:-100}
KILL=${KILL:-10}
ROUNDS=${ROUNDS:-3}
KILL_ROUND=${KILL_ROUND:-2}
GRACE=${GRACE:-5}
HIDDEN=${HIDDEN:-64}
SLACK=${SLACK:-5}
SUITE=${SUITE:-intl}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
DATA=${DATA:-$ROOT/examples/data/breast_cancer_wisconsin.csv}
BIG=${BIG:-200}

log() { printf '[liveness %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
  log "FAIL: $*" >&2
  exit 1
}

(( KILL < SITES )) || fail "KILL ($KILL) must be below SITES ($SITES)"
(( KILL_ROUND >= 1 && KILL_ROUND <= ROUNDS )) || fail "KILL_ROUND must be in 1..=$ROUNDS"

BIN=${LIVENESS_BIN_DIR:-$ROOT/target/release}
if [[ -z ${LIVENESS_BIN_DIR:-} && ( ! -x $BIN/confide || ! -x $BIN/confide-site ) ]]; then
  log "building release binaries"
  cargo build --release -q -p confide-coordinator -p confide-client
fi
[[ -x $BIN/confide && -x $BIN/confide-site ]] || fail "no confide / confide-site in $BIN"
command -v python3 >/dev/null || fail "python3 is needed to read the transcript"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/confide-liveness.XXXXXX")
PIDS=()
COORD_PID=""
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}" $COORD_PID; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  if [[ $rc -ne 0 && -f $WORK/coordinator.log ]]; then
    echo "---- coordinator log (last 30 lines) ----"
    tail -n 30 "$WORK/coordinator.log"
    echo "---- site-1 log (last 10 lines) ----"
    tail -n 10 "$WORK/site-1.log" 2>/dev/null
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

log "CA and $SITES site identities (demo keys made here) in $WORK"
"$BIN/confide" certs init --dir "$WORK/ca" --federation liveness >/dev/null
for i in $(seq 1 "$SITES"); do
  "$BIN/confide" certs issue --dir "$WORK/ca" --site "site-$i" --generate-keys-here --suite "$SUITE" >/dev/null 2>&1
done

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
MODEL='kind = "logistic"'
[[ -n $HIDDEN ]] && MODEL="kind = \"mlp\"
hidden = [$HIDDEN]"
cat >"$WORK/federation.toml" <<EOF
federation = "liveness"
listen = "127.0.0.1:$PORT"
suite = "$SUITE"
rounds = $ROUNDS
# All sites are there for round 1 (the grace waits for stragglers); the
# rounds after the kill go on with the others.
min_sites = $((SITES - KILL))
max_sites = $SITES
cohort_fraction = 1.0
secure_aggregation = true
statistics_round = true
evaluate_every_round = false
final_evaluation = false
join_grace_secs = 10.0

[secagg]
dropout_fraction = 0.1
collusion_fraction = 0.1
# Far above any round here: a round that waits for the dead is obvious.
stage_timeout_secs = 600
reconnect_grace_secs = $GRACE

[model]
$MODEL
features = 30
classes = 2

[training]
epochs = ${EPOCHS:-2}
batch_size = 32
learning_rate = 0.05

[limits]
# Every site dials from 127.0.0.1 at once: lift the per-address join limit.
join_rate_per_sec = 1000.0
join_burst = 1000

[checkpoints]
dir = "$WORK/checkpoints"
keep_last = 2

[tls]
certs_dir = "$WORK/ca"
EOF

log "coordinator on 127.0.0.1:$PORT"
RUST_LOG=${RUST_LOG:-info} "$BIN/confide" serve --config "$WORK/federation.toml" >"$WORK/coordinator.log" 2>&1 &
COORD_PID=$!
for _ in $(seq 1 100); do
  grep -q "listening" "$WORK/coordinator.log" 2>/dev/null && break
  kill -0 "$COORD_PID" 2>/dev/null || fail "the coordinator exited at start"
  sleep 0.1
done

# The victims: KILL sites picked at random (the log says which). They hold
# $BIG times the rows, so their local training outlasts share-keys and
# they are killed before their masked input leaves (as a big site that
# crashes while training would be).
mapfile -t VICTIMS < <(seq 1 "$SITES" | shuf -n "$KILL" | sort -n)
python3 - "$DATA" "$WORK/big.csv" "$BIG" <<'PY'
import sys
src, dst, times = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(src).read().splitlines()
with open(dst, "w") as f:
    f.write(lines[0] + "\n")
    for _ in range(times):
        f.write("\n".join(lines[1:]) + "\n")
PY
log "starting $SITES sites"
for i in $(seq 1 "$SITES"); do
  data=$DATA
  [[ " ${VICTIMS[*]} " == *" $i "* ]] && data=$WORK/big.csv
  "$BIN/confide-site" run --coordinator "https://localhost:$PORT" --site "site-$i" \
    --certs-dir "$WORK/ca" --state-dir "$WORK/state/site-$i" --data "$data" --label malignant \
    --max-reconnect-secs 5 >"$WORK/site-$i.log" 2>&1 &
  PIDS+=("$!")
done

log "round $KILL_ROUND: will kill sites ${VICTIMS[*]} after share-keys"
deadline=$(($(date +%s) + RUN_TIMEOUT))
until grep -q "stage closed round=$KILL_ROUND stage=share-keys " "$WORK/coordinator.log"; do
  (($(date +%s) < deadline)) || fail "share-keys of round $KILL_ROUND never closed"
  kill -0 "$COORD_PID" 2>/dev/null || fail "the coordinator exited before round $KILL_ROUND"
  sleep 0.05
done
for v in "${VICTIMS[@]}"; do
  kill -9 "${PIDS[$((v - 1))]}" 2>/dev/null || true
done
log "killed ${#VICTIMS[@]} sites"

while kill -0 "$COORD_PID" 2>/dev/null; do
  (($(date +%s) < deadline)) || fail "the federation did not finish within ${RUN_TIMEOUT}s"
  sleep 0.5
done
wait "$COORD_PID" || fail "the coordinator exited non-zero"
COORD_PID=""

victims=$(printf 'site-%s\n' "${VICTIMS[@]}")
python3 - "$WORK/checkpoints/transcript.jsonl" "$KILL_ROUND" "$GRACE" "$SLACK" "$victims" <<'PY'
import json, sys
path, kill_round, grace, slack, victims = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), set(sys.argv[5].split())
rounds = [json.loads(line) for line in open(path)]
base = []
for r in rounds:
    dropped = sorted({s for st in r["stages"] for s in st["dropped"]})
    print(f"round {r['round']}: {r['kind']} success={r['success']} {r['duration_secs']:.2f}s cohort={r['cohort_size']} survivors={len(r['survivors'])} dropped={dropped}")
    if r["round"] != kill_round:
        if not r["success"] or dropped:
            sys.exit(f"round {r['round']} should have had no dropout: {r['message']}")
        base.append(r["duration_secs"])
hit = [r for r in rounds if r["round"] == kill_round]
if not hit:
    sys.exit(f"no record of round {kill_round}")
r = hit[0]
if not r["success"]:
    sys.exit(f"round {kill_round} failed: {r['message']}")
masked = [st for st in r["stages"] if st["stage"] == "masked-input"]
if not masked or set(masked[0]["dropped"]) != victims:
    sys.exit(f"dropped at masked-input {masked and masked[0]['dropped']}, killed {sorted(victims)}")
other = {s for st in r["stages"] if st["stage"] != "masked-input" for s in st["dropped"]}
if other:
    sys.exit(f"dropped at other stages too: {sorted(other)}")
if victims & set(r["survivors"]):
    sys.exit("a killed site is among the survivors")
cohort = {m["site"] for m in r["cohort"]}
if set(r["survivors"]) != cohort - victims:
    sys.exit("survivors are not exactly the cohort minus the killed sites")
bound = grace + max(base, default=0.0) + slack
print(f"round {kill_round} took {r['duration_secs']:.2f}s; bound reconnect grace {grace:.0f}s + slowest round without dropout {max(base, default=0.0):.2f}s + slack {slack:.0f}s = {bound:.2f}s")
if r["duration_secs"] > bound:
    sys.exit("the round waited for the dead sites")
PY
log "PASS"
