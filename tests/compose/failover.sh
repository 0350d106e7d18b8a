#!/usr/bin/env bash
# Scenario 3 of the compose test (run by tests/compose/run.sh after the
# other two, with the images already built; runs alone too):
# docker-compose.yml + deploy/compose.ha.yml + tests/compose/failover.yml —
# SeaweedFS, two coordinators sharing it, three hospitals knowing both.
#
#   * the first coordinator takes the lease and runs the federation; the
#     second waits as the standby (health NOT_SERVING, "standby" in its log);
#   * once a few training rounds are checkpointed, the active coordinator is
#     killed with SIGKILL in the middle of a round (its machine is gone);
#   * the standby must take the lease within the lease TTL + a few seconds,
#     resume from the newest complete checkpoint and finish the federation:
#     every round exactly once, all successful, 12 training rounds — what an
#     uninterrupted run records;
#   * the killed coordinator, started again, must stay a fenced standby while
#     the other one is active (no "lease taken", no checkpoint written).
#
# Prints the failover gap: last checkpoint written before the kill, lease
# taken, first checkpoint written after. Removes everything it made. Exit 0 = pass.
#
#   deploy/build-offline-image.sh && tests/compose/failover.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
T0=$(date +%s)
export CONFIDE_IMAGE=${CONFIDE_IMAGE:-confide:local}
export CONFIDE_PROMETHEUS_IMAGE=${CONFIDE_PROMETHEUS_IMAGE:-confide-prometheus:local}
export CONFIDE_SEAWEEDFS_IMAGE=${CONFIDE_SEAWEEDFS_IMAGE:-confide-seaweedfs:local}
export CONFIDE_PROMETHEUS_PORT=""
UP_TIMEOUT=${UP_TIMEOUT:-180}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
TTL=6            # CONFIDE_HA__LEASE_TTL_SECS in tests/compose/failover.yml
KILL_AFTER=${KILL_AFTER:-4}   # checkpoints written before the kill

if docker compose version >/dev/null 2>&1; then DC=(docker compose); else DC=(docker-compose); fi
P="confide-ci-$(date +%s)-$$-failover"
F=(-f docker-compose.yml -f deploy/compose.ha.yml -f tests/compose/failover.yml)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/confide-failover.XXXXXX")

log() { printf '[failover %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
  log "FAIL: $*" >&2
  exit 1
}
dc() { "${DC[@]}" -p "$P" "${F[@]}" "$@"; }
cleanup() {
  local rc=$?
  set +e
  if [[ $rc -ne 0 ]]; then
    echo "---- $P: last log lines (failure) ----"
    timeout 30 "${DC[@]}" -p "$P" "${F[@]}" logs --no-color --tail=40 2>/dev/null
  fi
  timeout 120 "${DC[@]}" -p "$P" "${F[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1
  docker ps -aq --filter "label=com.docker.compose.project=$P" | xargs -r docker rm -f >/dev/null 2>&1
  docker network ls -q --filter "label=com.docker.compose.project=$P" | xargs -r docker network rm >/dev/null 2>&1
  docker volume ls -q --filter "label=com.docker.compose.project=$P" | xargs -r docker volume rm -f >/dev/null 2>&1
  rm -rf "$WORK"
  log "cleaned up (exit $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

container_of() {
  docker ps -aq --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.service=$1" | head -n1
}
# Log lines with docker's RFC 3339 timestamps, colour codes removed.
logs_of() { docker logs -t "$1" 2>&1 | sed -E 's/\x1b\[[0-9;]*m//g'; }
# wait_for CONTAINER REGEX SECONDS: until the container's log has a matching line.
wait_for() {
  local until=$(($(date +%s) + $3))
  until logs_of "$1" | grep -qE "$2"; do
    [[ $(date +%s) -lt $until ]] || return 1
    sleep 0.2
  done
}
epoch() { date -d "$1" +%s.%N; }

if ! docker image inspect "$CONFIDE_SEAWEEDFS_IMAGE" >/dev/null 2>&1 || [[ ${CONFIDE_REBUILD_SEAWEEDFS:-1} == 1 ]]; then
  log "building $CONFIDE_SEAWEEDFS_IMAGE offline (SeaweedFS's static weed + docker import)"
  deploy/build-offline-image.sh --seaweedfs
fi
docker image inspect "$CONFIDE_IMAGE" >/dev/null || fail "no image $CONFIDE_IMAGE (deploy/build-offline-image.sh)"

log "scenario 3: SeaweedFS + 2 coordinators + 3 hospitals (project $P)"
# The coordinators first: the standby checks below must not race a
# federation that could finish while compose is still creating containers.
timeout "$UP_TIMEOUT" "${DC[@]}" -p "$P" "${F[@]}" up -d --no-build coordinator coordinator-2 \
  || fail "docker compose up (coordinators) did not finish within $UP_TIMEOUT s"
A=$(container_of coordinator)
B=$(container_of coordinator-2)
[[ -n $A && -n $B ]] || fail "coordinator containers missing"

wait_for "$A" "lease taken" 60 || fail "the first coordinator never took the lease"
wait_for "$B" "standby: another coordinator is active" 60 || fail "coordinator-2 never reported itself standby"
B_HEALTH=$(docker exec "$B" confide health --ca /certs/ca.pem 2>&1 || true)
[[ $B_HEALTH == *"not serving"* ]] || fail "the standby's health check should fail as not serving, got: $B_HEALTH"
log "PASS coordinator holds the lease; coordinator-2 is the standby (health: ${B_HEALTH##*: })"
timeout "$UP_TIMEOUT" "${DC[@]}" -p "$P" "${F[@]}" up -d --no-build \
  || fail "docker compose up (hospitals) did not finish within $UP_TIMEOUT s"

# Kill the active coordinator inside a round, once $KILL_AFTER checkpoints exist.
until_kill=$(($(date +%s) + RUN_TIMEOUT))
while [[ $(logs_of "$A" | grep -c "checkpoint written") -lt $KILL_AFTER ]]; do
  [[ $(date +%s) -lt $until_kill ]] || fail "fewer than $KILL_AFTER checkpoints in $RUN_TIMEOUT s"
  [[ $(docker inspect -f '{{.State.Status}}' "$A") == running ]] || fail "the active coordinator stopped on its own"
  sleep 0.2
done
n_started=$(logs_of "$A" | grep -c "round started")
while [[ $(logs_of "$A" | grep -c "round started") -le $n_started ]]; do sleep 0.05; done
sleep 0.5
docker kill -s KILL "$A" >/dev/null
T_KILL=$(date +%s.%N)
logs_of "$A" >"$WORK/a-before.log"
LAST_BEFORE=$(grep "checkpoint written" "$WORK/a-before.log" | tail -n1)
IN_FLIGHT=$(grep "round started" "$WORK/a-before.log" | tail -n1 | grep -oE 'round=[0-9]+' | head -n1)
log "active coordinator killed (SIGKILL) during $IN_FLIGHT; its last checkpoint: $(grep -oE 'round-[0-9]+' <<<"$LAST_BEFORE")"

wait_for "$B" "lease taken" $((TTL + 30)) || fail "coordinator-2 did not take the lease"
T_TAKE=$(epoch "$(logs_of "$B" | grep "lease taken" | head -n1 | cut -d' ' -f1)")
TAKE_SECS=$(python3 -c "print(f'{$T_TAKE - $T_KILL:.1f}')")
python3 -c "import sys; sys.exit(0 if $T_TAKE - $T_KILL <= $TTL + 5 else 1)" \
  || fail "takeover took $TAKE_SECS s, more than the lease TTL ($TTL s) + 5 s"
log "PASS coordinator-2 took the lease ${TAKE_SECS} s after the kill (lease TTL $TTL s)"

# The killed coordinator comes back (a restarted machine): it must wait as a fenced standby.
if [[ $(docker inspect -f '{{.State.Status}}' "$A") != running ]]; then
  docker start "$A" >/dev/null
fi
T_REVIVE=$(date -u +%Y-%m-%dT%H:%M:%S)
wait_for "$A" "standby: another coordinator is active" 60 || fail "the revived coordinator did not wait as standby"
log "revived coordinator is waiting as the standby"

rc=$(timeout "$RUN_TIMEOUT" docker wait "$B") || fail "coordinator-2 still running after $RUN_TIMEOUT s"
logs_of "$B" >"$WORK/b.log"
[[ $rc == 0 ]] || fail "coordinator-2 exited $rc"
for s in hospital-a hospital-b hospital-c; do
  c=$(container_of "$s")
  src=$(timeout 60 docker wait "$c") || fail "$s still running"
  [[ $src == 0 ]] || fail "$s exited $src"
done
log "PASS coordinator-2 finished the federation; all three hospitals exited 0"

# The revived coordinator wrote nothing while coordinator-2 held the lease:
# nothing before coordinator-2 released it at its clean end (after which the
# revived one may take it, find the federation done and exit).
logs_of "$A" | awk -v t="$T_REVIVE" '$1 >= t' >"$WORK/a-after.log"
RELEASED=$(grep "lease released" "$WORK/b.log" | head -n1 | cut -d' ' -f1)
[[ -n $RELEASED ]] || fail "coordinator-2 did not release the lease at its end"
python3 - "$WORK/a-after.log" "$RELEASED" <<'PY' || fail "the revived coordinator acted while coordinator-2 held the lease"
import sys, datetime
ts = lambda s: datetime.datetime.fromisoformat(s[:26].rstrip("Z") + "+00:00").timestamp()
released = ts(sys.argv[2])
for line in open(sys.argv[1]):
    if ("lease taken" in line or "checkpoint written" in line) and ts(line.split(" ", 1)[0]) < released:
        sys.exit(f"while coordinator-2 held the lease: {line.strip()[:200]}")
print("PASS the revived coordinator stayed a fenced standby while coordinator-2 held the lease")
PY

# The round history, read back from the bucket.
dc run --rm --no-deps -T --entrypoint confide coordinator-2 \
  rounds --checkpoints s3://confide/breast-cancer-demo --json >"$WORK/rounds.json" \
  || fail "could not read the round history from the bucket"
dc run --rm --no-deps -T --entrypoint confide coordinator-2 \
  rounds --checkpoints s3://confide/breast-cancer-demo || true
FIRST_AFTER=$(grep "checkpoint written" "$WORK/b.log" | head -n1)
python3 - "$WORK/rounds.json" "$T_KILL" "$T_TAKE" "$LAST_BEFORE" "$FIRST_AFTER" <<'PY' || fail "round history after the failover"
import json, sys, datetime
h = json.load(open(sys.argv[1]))
ids = [r["round"] for r in h]
assert ids == list(range(1, len(h) + 1)), f"round ids not each once in order: {ids}"
bad = [(r["round"], r["kind"], r["message"]) for r in h if not r["success"]]
assert not bad, f"failed rounds: {bad}"
train = [r for r in h if r["kind"] == "train"]
assert len(train) == 12, f"expected 12 training rounds, got {len(train)}"
assert all(r["survivors"] == 3 for r in h), "a round ran without all three hospitals"
ev = [r for r in h if r["kind"] == "evaluate"]
print(f"PASS every round exactly once and successful: {len(h)} rounds ({len(train)} training, "
      f"as an uninterrupted run), final accuracy {ev[-1]['accuracy']:.4f}")
ts = lambda line: datetime.datetime.fromisoformat(line.split(" ", 1)[0][:26].rstrip("Z") + "+00:00").timestamp()
kill, take = float(sys.argv[2]), float(sys.argv[3])
last, first = ts(sys.argv[4]), ts(sys.argv[5])
print(f"failover gap: last checkpoint before the kill -> kill {kill - last:.1f} s -> lease taken "
      f"{take - kill:.1f} s -> first checkpoint after {first - take:.1f} s; "
      f"checkpoint to checkpoint {first - last:.1f} s")
PY
log "PASS (scenario 3 in $(($(date +%s) - T0)) s)"
