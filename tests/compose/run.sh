#!/usr/bin/env bash
# The compose demo, run for real: builds the image (offline, see
# deploy/build-offline-image.sh), runs docker-compose.yml and checks what a
# user would check, then kills a hospital in the middle of a round.
#
# Scenario 1 — the demo as shipped (coordinator + hospital-a/b/c):
#   * every round completed (round history from the checkpoint volume),
#   * checkpoints exist in the volume and load (`confide checkpoints export`,
#     plus the safetensors header read on the host),
#   * final held-out accuracy >= $ACCURACY_BAR,
#   * the hospitals' networks are isolated (network membership, and a live
#     TCP probe from hospital-a's network to a container on hospital-b's
#     network that must not connect, next to a control from inside
#     hospital-b's network that must).
# Scenario 2 — five hospitals (deploy/compose.four-sites.yml +
#   deploy/compose.five-sites.yml; three or four cannot recover a dropout, see
#   docs/compose.md): hospital-b is frozen as a training round starts and
#   killed while that round waits for it; the round must complete with the
#   survivors and the later rounds must run without it.
#
# Scenario 3 — two coordinators on SeaweedFS (tests/compose/failover.sh): the
#   active one is killed mid-round; the standby must take over and finish.
#
# Always removes its containers, networks and volumes (trap). Exit 0 = pass.
#
#   tests/compose/run.sh
#   CONFIDE_COMPOSE_IMAGE_BUILD=dockerfile tests/compose/run.sh   # docker build instead
#   CONFIDE_COMPOSE_IMAGE_BUILD=none CONFIDE_IMAGE=x:y tests/compose/run.sh   # test a given image
#   CONFIDE_SKIP_CARGO=1 tests/compose/run.sh   # binaries already in target/release
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
T0=$(date +%s)

ACCURACY_BAR=${ACCURACY_BAR:-0.93}
export CONFIDE_IMAGE=${CONFIDE_IMAGE:-confide:local}
export CONFIDE_PROMETHEUS_IMAGE=${CONFIDE_PROMETHEUS_IMAGE:-confide-prometheus:local}
# Prometheus publishes its port on a free loopback port (compose picks it).
export CONFIDE_PROMETHEUS_PORT=""
# Bounded waits (seconds).
UP_TIMEOUT=${UP_TIMEOUT:-180}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}

if docker compose version >/dev/null 2>&1; then
  DC=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  DC=(docker-compose)
else
  echo "compose test: neither 'docker compose' nor 'docker-compose' found" >&2
  exit 1
fi
docker info >/dev/null 2>&1 || { echo "compose test: the Docker engine is not reachable" >&2; exit 1; }

RUN_ID="$(date +%s)-$$"
P1="confide-ci-${RUN_ID}-demo"
P2="confide-ci-${RUN_ID}-dropout"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/confide-compose.XXXXXX")
PROJECTS=()
PROBES=()
F1=(-f docker-compose.yml)
F2=(-f docker-compose.yml -f deploy/compose.four-sites.yml -f deploy/compose.five-sites.yml -f tests/compose/dropout.yml)

log() { printf '[compose-test %4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fail() {
  log "FAIL: $*" >&2
  exit 1
}

cleanup() {
  local rc=$?
  set +e
  for c in "${PROBES[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
  for p in "${PROJECTS[@]}"; do
    if [[ $rc -ne 0 ]]; then
      echo "---- $p: last log lines (failure) ----"
      timeout 30 "${DC[@]}" -p "$p" "${F2[@]}" logs --no-color --tail=40 2>/dev/null
    fi
    timeout 120 "${DC[@]}" -p "$p" "${F2[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1
    # Anything compose did not remove (e.g. after a compose crash).
    docker ps -aq --filter "label=com.docker.compose.project=$p" | xargs -r docker rm -f >/dev/null 2>&1
    docker network ls -q --filter "label=com.docker.compose.project=$p" | xargs -r docker network rm >/dev/null 2>&1
    docker volume ls -q --filter "label=com.docker.compose.project=$p" | xargs -r docker volume rm -f >/dev/null 2>&1
  done
  rm -rf "$WORK"
  log "cleaned up (exit $rc)"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dc() { local p=$1; shift; "${DC[@]}" -p "$p" "$@"; }
cid() { dc "$1" "${@:3}" ps -q "$2" | head -n1; }
volume_of() {
  docker volume ls -q --filter "label=com.docker.compose.project=$1" --filter "label=com.docker.compose.volume=$2" | head -n1
}
network_of() {
  docker network ls -q --filter "label=com.docker.compose.project=$1" --filter "label=com.docker.compose.network=$2" | head -n1
}
exit_code() { docker inspect -f '{{.State.ExitCode}}' "$1"; }
# wait_exit CONTAINER SECONDS: the container's exit code, or fail on timeout.
wait_exit() {
  local rc
  rc=$(timeout "$2" docker wait "$1") || fail "container $(docker inspect -f '{{.Name}}' "$1") still running after $2 s"
  echo "$rc"
}

# ---------------------------------------------------------------- image
t=$(date +%s)
case ${CONFIDE_COMPOSE_IMAGE_BUILD:-offline} in
  dockerfile)
    log "building $CONFIDE_IMAGE and $CONFIDE_PROMETHEUS_IMAGE from their Dockerfiles"
    docker build -t "$CONFIDE_IMAGE" .
    docker build -t "$CONFIDE_PROMETHEUS_IMAGE" deploy/prometheus
    ;;
  none)
    log "using the existing images $CONFIDE_IMAGE and $CONFIDE_PROMETHEUS_IMAGE"
    docker image inspect "$CONFIDE_IMAGE" >/dev/null || fail "no image $CONFIDE_IMAGE"
    docker image inspect "$CONFIDE_PROMETHEUS_IMAGE" >/dev/null || fail "no image $CONFIDE_PROMETHEUS_IMAGE"
    ;;
  offline)
    log "building $CONFIDE_IMAGE offline (host binaries + docker import)"
    deploy/build-offline-image.sh
    log "building $CONFIDE_PROMETHEUS_IMAGE offline (Debian's prometheus package + docker import)"
    deploy/build-offline-image.sh --prometheus
    ;;
  *) fail "CONFIDE_COMPOSE_IMAGE_BUILD must be offline, dockerfile or none" ;;
esac
IMAGE_SECS=$(($(date +%s) - t))
IMAGE_BYTES=$(docker image inspect "$CONFIDE_IMAGE" --format '{{.Size}}')
log "image $CONFIDE_IMAGE: $((IMAGE_BYTES / 1024 / 1024)) MiB ($IMAGE_BYTES bytes), built in ${IMAGE_SECS} s"

# ------------------------------------------------------------ scenario 1
log "scenario 1: coordinator + 3 hospitals (project $P1)"
t=$(date +%s)
PROJECTS+=("$P1")
timeout "$UP_TIMEOUT" "${DC[@]}" -p "$P1" "${F1[@]}" up -d --no-build \
  || fail "docker compose up did not finish within $UP_TIMEOUT s"
COORD=$(cid "$P1" coordinator "${F1[@]}")
[[ -n $COORD ]] || fail "no coordinator container"
# Sites start only once the coordinator is healthy (depends_on), and a short
# federation may already be over: healthy, or finished with exit code 0.
COORD_STATE=$(docker inspect -f '{{.State.Health.Status}} {{.State.Status}} {{.State.ExitCode}}' "$COORD")
[[ $COORD_STATE == healthy* || $COORD_STATE == *" exited 0" ]] || fail "coordinator neither healthy nor finished cleanly after up ($COORD_STATE)"
declare -A SITE1
for s in hospital-a hospital-b hospital-c; do
  SITE1[$s]=$(cid "$P1" "$s" "${F1[@]}")
  [[ -n ${SITE1[$s]} ]] || fail "no $s container"
done
CERTS_RC=$(exit_code "$(cid "$P1" certs "${F1[@]}")")
[[ $CERTS_RC == 0 ]] || fail "certs job exited $CERTS_RC"
log "all services up; waiting (at most $RUN_TIMEOUT s) for the federation to finish"
# Prometheus: while the coordinator runs, its targets API must report the
# coordinator's /metrics as a target that is up.
PROM=$(dc "$P1" "${F1[@]}" port prometheus 9090 | tail -n1 | tr -d '\r')
[[ $PROM == 127.0.0.1:* ]] || fail "prometheus port not published on loopback ($PROM)"
log "prometheus at http://$PROM"
python3 - "$PROM" "$COORD" <<'PY' || fail "Prometheus never reported the coordinator target up"
import json, subprocess, sys, time, urllib.request
url, coord = sys.argv[1], sys.argv[2]
deadline = time.time() + 120
seen = None
while time.time() < deadline:
    try:
        with urllib.request.urlopen(f"http://{url}/api/v1/targets", timeout=5) as r:
            t = json.load(r)["data"]["activeTargets"]
    except OSError:
        t = []
    mine = [x for x in t if x["labels"].get("job") == "confide-coordinator"]
    if mine and mine[0]["health"] == "up":
        x = mine[0]
        print(f"PASS Prometheus targets API: {x['scrapeUrl']} health=up "
              f"(last scrape {x['lastScrape']}, {x['lastScrapeDuration']:.4f} s)")
        sys.exit(0)
    seen = mine[0] if mine else None
    state = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", coord],
                           capture_output=True, text=True).stdout.strip()
    if state != "running":
        break
    time.sleep(0.5)
print(f"coordinator target never up while the coordinator ran: {seen}", file=sys.stderr)
sys.exit(1)
PY
rc=$(wait_exit "$COORD" "$RUN_TIMEOUT")
dc "$P1" "${F1[@]}" logs --no-color >"$WORK/scenario1.log" 2>&1 || true
[[ $rc == 0 ]] || fail "coordinator exited $rc"
for s in hospital-a hospital-b hospital-c; do
  src=$(wait_exit "${SITE1[$s]}" 30)
  [[ $src == 0 ]] || fail "$s exited $src"
done
S1_SECS=$(($(date +%s) - t))
log "federation finished in ${S1_SECS} s; coordinator and all three sites exited 0"

CK1=$(volume_of "$P1" checkpoints)
[[ -n $CK1 ]] || fail "no checkpoints volume"
ck() { docker run --rm --network none -v "$1:/ck:ro" "$CONFIDE_IMAGE" "${@:2}"; }

echo "---- scenario 1: round table (confide rounds, read back from the checkpoint volume) ----"
ck "$CK1" confide rounds --checkpoints /ck
ck "$CK1" confide rounds --checkpoints /ck --json >"$WORK/rounds1.json"
python3 - "$WORK/rounds1.json" "$ACCURACY_BAR" <<'PY' || fail "scenario 1 round history"
import json, sys
h = json.load(open(sys.argv[1])); bar = float(sys.argv[2])
bad = [r for r in h if not r["success"]]
assert not bad, f"failed rounds: {bad}"
train = [r for r in h if r["kind"] == "train"]
assert len(train) == 12, f"expected 12 training rounds, got {len(train)}"
assert any(r["kind"] == "statistics" for r in h), "no statistics round"
assert all(r["cohort"] == 3 and r["survivors"] == 3 for r in h), "a round ran without all three hospitals"
ev = [r for r in h if r["kind"] == "evaluate"]
assert ev and ev[-1]["accuracy"] is not None, "no final evaluation"
acc = ev[-1]["accuracy"]
print(f"PASS every round completed: {len(h)} rounds ({len(train)} training), all 3/3 survivors")
assert acc >= bar, f"final accuracy {acc:.4f} below the bar {bar}"
print(f"PASS final held-out accuracy {acc:.4f} >= {bar}")
PY
grep -E "final held-out accuracy" "$WORK/scenario1.log" | sed 's/^/  coordinator log: /' || true

echo "---- scenario 1: what Prometheus recorded ----"
# The coordinator kept /metrics up for [metrics] linger_secs after the last
# round, so the last scrape holds the final counts; they must match the round
# table read from the checkpoints.
python3 - "$PROM" "$WORK/rounds1.json" <<'PY' || fail "Prometheus's counts differ from the round table"
import json, sys, urllib.parse, urllib.request
url, rounds = sys.argv[1], json.load(open(sys.argv[2]))
def q(expr):
    u = f"http://{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(u, timeout=10) as r:
        return {s["metric"].get("kind", ""): float(s["value"][1]) for s in json.load(r)["data"]["result"]}
got = q('max_over_time(confide_rounds_succeeded_total{job="confide-coordinator"}[15m])')
want = {}
for r in rounds:
    want[r["kind"]] = want.get(r["kind"], 0) + 1
assert got == {k: float(v) for k, v in want.items()}, f"Prometheus {got}, round table {want}"
failed = sum(q('max_over_time(confide_rounds_failed_total{job="confide-coordinator"}[15m])').values())
assert failed == 0, f"Prometheus recorded {failed} failed rounds"
print(f"PASS Prometheus scraped the final counts: rounds succeeded by kind {got}, none failed, as in the round table")
PY

echo "---- scenario 1: checkpoints in volume $CK1 ----"
ck "$CK1" confide checkpoints list --dir /ck | tee "$WORK/ck1.txt"
n_ck=$(grep -cE '^[0-9]+ ' "$WORK/ck1.txt" || true)
[[ $n_ck -ge 1 ]] || fail "no checkpoints listed"
ck "$CK1" ls -l /ck
# Load: the coordinator's own loader (export re-reads model + manifest) ...
ck "$CK1" bash -c 'confide checkpoints export --dir /ck --out /tmp/final.safetensors >&2 && cat /tmp/final.safetensors' \
  >"$WORK/final.safetensors" || fail "checkpoint export failed"
# ... and an independent reader of the raw files on the host.
latest=$(ck "$CK1" ls /ck | grep -E '^round-[0-9]+$' | sort | tail -n1)
ck "$CK1" cat "/ck/$latest/model.safetensors" >"$WORK/model.safetensors"
ck "$CK1" cat "/ck/$latest/manifest.json" >"$WORK/manifest.json"
python3 - "$WORK/model.safetensors" "$WORK/final.safetensors" "$WORK/manifest.json" <<'PY' || fail "checkpoint files do not load"
import json, struct, sys, math
def load(p):
    b = open(p, "rb").read()
    (n,) = struct.unpack("<Q", b[:8])
    head = json.loads(b[8:8 + n]); data = b[8 + n:]
    out = {}
    for name, t in head.items():
        if name == "__metadata__": continue
        s, e = t["data_offsets"]
        assert t["dtype"] == "F32", (name, t["dtype"])
        count = math.prod(t["shape"]) if t["shape"] else 1
        assert e - s == 4 * count, (name, s, e, t["shape"])
        vals = struct.unpack(f"<{count}f", data[s:e])
        assert all(math.isfinite(v) for v in vals), f"{name}: non-finite values"
        out[name] = (t["shape"], vals)
    return head.get("__metadata__", {}), out
_, model = load(sys.argv[1]); meta, exported = load(sys.argv[2])
m = json.load(open(sys.argv[3]))
assert model, "empty model"
nonzero = sum(1 for _, v in model.values() for x in v if x != 0.0)
assert nonzero > 0, "model is all zeros (never trained)"
for name in model: assert name in exported, f"export lacks {name}"
print(f"PASS checkpoint round {m['round']} loads: model tensors " + ", ".join(f"{k}{v[0]}" for k, v in sorted(model.items()))
      + f"; export adds {sorted(set(exported) - set(model))}, metadata {sorted(meta)}")
PY

echo "---- scenario 1: key custody ----"
# Every file of a volume, as "mode path" lines (read-only, no network).
files_of() { docker run --rm --network none --user 0:0 --entrypoint bash -v "$1:/v:ro" "$CONFIDE_IMAGE" -c 'shopt -s globstar dotglob nullglob; cd /v; for f in **; do [[ -f $f ]] && ls -l "$f"; done' | awk '{print $1, $NF}' | sort; }
CA_FILES=$(files_of "$(volume_of "$P1" ca)")
log "CA volume: $(tr '\n' ' ' <<<"$CA_FILES")"
grep -E 'hospital-[a-z]+\.key|signing' <<<"$CA_FILES" && fail "a hospital's private key is in the CA volume"
grep -q 'sites/hospital-a.pem' <<<"$CA_FILES" || fail "the CA volume has no record of hospital-a's certificate"
EX_FILES=$(files_of "$(volume_of "$P1" exchange)")
grep -E '\.key|signing' <<<"$EX_FILES" && fail "a private key is in the exchange volume"
for s in hospital-a hospital-b hospital-c; do
  own=$(files_of "$(volume_of "$P1" "$s-certs")")
  grep -qx -- "-rw------- $s.key" <<<"$own" || fail "$s's TLS key is not in its own volume with mode 0600 ($own)"
  grep -qx -- "-rw------- $s.signing.toml" <<<"$own" || fail "$s's signing key is not in its own volume with mode 0600"
done
echo "PASS custody: each hospital's keys exist only in its own volume (0600); the CA volume and the exchange hold certificates and requests only"

echo "---- scenario 1: network isolation ----"
declare -A NETS
for s in coordinator hospital-a hospital-b hospital-c; do
  c=$([[ $s == coordinator ]] && echo "$COORD" || echo "${SITE1[$s]}")
  NETS[$s]=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$c" | xargs -n1 | sort | xargs)
  log "$s is on: ${NETS[$s]}"
done
for s in hospital-a hospital-b hospital-c; do
  [[ $(wc -w <<<"${NETS[$s]}") == 1 ]] || fail "$s is on more than one network"
  [[ " ${NETS[coordinator]} " == *" ${NETS[$s]} "* ]] || fail "coordinator does not share $s's network"
done
[[ ${NETS[hospital-a]} != "${NETS[hospital-b]}" && ${NETS[hospital-a]} != "${NETS[hospital-c]}" && ${NETS[hospital-b]} != "${NETS[hospital-c]}" ]] \
  || fail "two hospitals share a network"
echo "PASS membership: each hospital is on its own network, shared only with the coordinator"

# Live probe: a container on hospital-b's network (the hospital-b service
# definition, idle), and TCP connection attempts to it.
PROBE_B="${P1}-probe-b"
PROBES+=("$PROBE_B")
dc "$P1" "${F1[@]}" run -d -T --no-deps --name "$PROBE_B" --entrypoint sleep hospital-b 300 >/dev/null
NET_B=$(network_of "$P1" net-b)
IP_B=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$(docker network inspect -f '{{.Name}}' "$NET_B")\").IPAddress}}" "$PROBE_B")
[[ -n $IP_B ]] || fail "probe container has no address on net-b"
# connect HOST PORT: prints "connected", "refused", "timeout" or the error.
# (Runs in the container: the single quotes are deliberate.)
# shellcheck disable=SC2016
PROBE_SCRIPT='
( exec 3<>"/dev/tcp/$1/$2" ) 2>/tmp/err & pid=$!
for _ in {1..30}; do
  sleep 0.1; kill -0 $pid 2>/dev/null || break
done
if kill -0 $pid 2>/dev/null; then kill $pid; echo timeout; exit 0; fi
if wait $pid; then echo connected; exit 0; fi
err=$(</tmp/err)
if [[ $err == *refused* ]]; then echo refused; else echo "${err##*: }"; fi'
probe() { dc "$P1" "${F1[@]}" run -T --rm --no-deps --entrypoint bash "$1" -c "$PROBE_SCRIPT" probe "$2" "$3" 2>/dev/null | tr -d '\r' | tail -n1; }
ctl=$(probe hospital-b "$IP_B" 7443)
log "from hospital-b's network to $IP_B:7443 (control): $ctl"
[[ $ctl == refused ]] || fail "control probe inside net-b should be refused (reachable host, closed port), got: $ctl"
got=$(probe hospital-a "$IP_B" 7443)
log "from hospital-a's network to hospital-b's network $IP_B:7443: $got"
[[ $got != connected && $got != refused ]] || fail "hospital-a reached hospital-b's network ($got)"
got=$(probe hospital-a hospital-b 7443)
log "from hospital-a's network to the name hospital-b: $got"
[[ $got != connected && $got != refused ]] || fail "hospital-a resolved and reached hospital-b ($got)"
echo "PASS isolation: from hospital-a's network no connection to hospital-b, by address or by name; the same probe inside net-b is answered"
docker rm -f "$PROBE_B" >/dev/null

timeout 120 "${DC[@]}" -p "$P1" "${F1[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# ------------------------------------------------------------ scenario 2
log "scenario 2: 5 hospitals, kill hospital-b in the middle of a round (project $P2)"
t=$(date +%s)
PROJECTS+=("$P2")
KILL_ROUND=${KILL_ROUND:-4}
# Rounds take a fraction of a second, so the kill is driven by a watcher that
# follows the coordinator's log from its first line, started before `up`.
# As soon as round $KILL_ROUND (a training round) closes its advertise-keys
# stage, hospital-b is frozen: usually while the sites exchange key shares or
# train, so after its masks are already entangled with the others' and the
# survivors must reconstruct them. Its connection stays up, so the round in
# flight (or, if it had already sent everything for this one, the next)
# counts on it; two seconds later, while that round waits on it, it is
# killed for good (SIGKILL).
container_of() {
  docker ps -aq --filter "label=com.docker.compose.project=$P2" --filter "label=com.docker.compose.service=$1" | head -n1
}
watch_and_kill() {
  local c="" b line
  until [[ -n $c ]]; do c=$(container_of coordinator); [[ -n $c ]] || sleep 0.1; done
  # `docker logs -f` on a created-but-not-started container returns at once.
  while [[ $(docker inspect -f '{{.State.Status}}' "$c") == created ]]; do sleep 0.1; done
  while IFS= read -r line; do
    if [[ $line =~ stage\ closed\ round=$KILL_ROUND\ stage=advertise-keys ]]; then
      b=$(container_of hospital-b)
      # The cgroup freezer can time out on a loaded machine ("unable to
      # freeze"); retry, and if it still will not freeze, kill at once: still
      # mid-round, only without the pause.
      local frozen=""
      for _ in 1 2 3; do
        if docker pause "$b" >/dev/null; then frozen=1; break; fi
        sleep 0.2
      done
      log "coordinator: ${line:0:160}"
      if [[ -n $frozen ]]; then
        log "round $KILL_ROUND past advertise-keys (sites now exchange key shares): hospital-b frozen"
        sleep 2
      else
        log "round $KILL_ROUND past advertise-keys: hospital-b could not be frozen; killing it now"
      fi
      "${DC[@]}" -p "$P2" "${F2[@]}" kill hospital-b >/dev/null 2>&1 || docker kill "$b" >/dev/null || return 1
      log "hospital-b killed with SIGKILL at $(date -u +%H:%M:%S) UTC, mid-round (the round in flight waits on it)"
      echo killed >"$WORK/killed"
      return 0
    fi
  done < <(timeout "$RUN_TIMEOUT" docker logs -f "$c" 2>&1)
  return 1
}
watch_and_kill &
WATCHER=$!
timeout "$UP_TIMEOUT" "${DC[@]}" -p "$P2" "${F2[@]}" up -d --no-build \
  || fail "docker compose up (5 sites) did not finish within $UP_TIMEOUT s"
COORD2=$(cid "$P2" coordinator "${F2[@]}")
declare -A SITE2
for s in hospital-a hospital-b hospital-c hospital-d hospital-e; do
  SITE2[$s]=$(cid "$P2" "$s" "${F2[@]}")
  [[ -n ${SITE2[$s]} ]] || fail "no $s container"
done
timeout "$RUN_TIMEOUT" tail --pid="$WATCHER" -f /dev/null || fail "the watcher did not finish"
wait "$WATCHER" || true
[[ -f $WORK/killed ]] || fail "round $KILL_ROUND never started, or hospital-b could not be killed"
rc=$(wait_exit "$COORD2" "$RUN_TIMEOUT")
docker logs "$COORD2" >"$WORK/coordinator2.log" 2>&1 || true
[[ $rc == 0 ]] || fail "coordinator (5 sites) exited $rc"
for s in hospital-a hospital-c hospital-d hospital-e; do
  src=$(wait_exit "${SITE2[$s]}" 30)
  [[ $src == 0 ]] || fail "$s exited $src"
done
b_rc=$(exit_code "${SITE2[hospital-b]}")
[[ $b_rc != 0 ]] || fail "hospital-b exited 0: it was not killed"
S2_SECS=$(($(date +%s) - t))
log "federation finished in ${S2_SECS} s; survivors exited 0, hospital-b exited $b_rc (killed)"

CK2=$(volume_of "$P2" checkpoints)
echo "---- scenario 2: round table (from the checkpoint volume) ----"
ck "$CK2" confide rounds --checkpoints /ck
ck "$CK2" confide rounds --checkpoints /ck --json >"$WORK/rounds2.json"
echo "---- scenario 2: kill-and-recover evidence (coordinator log) ----"
grep -E "round started|stage closed.*dropped=\[[0-9]|round finished|round failed" "$WORK/coordinator2.log" \
  | awk -v r="$KILL_ROUND" '{ if (match($0, /round=[0-9]+/)) { n = substr($0, RSTART + 6, RLENGTH - 6) + 0; if (n >= r && n <= r + 2) print } }' \
  | sed -E 's/\x1b\[[0-9;]*m//g' | cut -c1-260
# Which member hospital-b was, and where the coordinator gave up on it.
B_MEMBER=$(docker logs "${SITE2[hospital-b]}" 2>&1 | sed -nE 's/.*round started round=[0-9]+ .*member=([0-9]+).*/\1/p' | head -n1)
[[ -n $B_MEMBER ]] || fail "hospital-b's member id not found in its log"
DROP=$(sed -nE "s/.*stage closed round=([0-9]+) stage=([a-z-]+) .*dropped=\[([0-9, ]*)\].*/\1 \2 \3/p" "$WORK/coordinator2.log" \
  | awk -v m="$B_MEMBER" '{ for (i = 3; i <= NF; i++) { gsub(",", "", $i); if ($i == m) { print $1, $2; exit } } }')
[[ -n $DROP ]] || fail "the coordinator never dropped hospital-b (member $B_MEMBER)"
read -r DROP_ROUND DROP_STAGE <<<"$DROP"
log "hospital-b = member $B_MEMBER; dropped by the coordinator in round $DROP_ROUND at stage $DROP_STAGE"
python3 - "$WORK/rounds2.json" "$KILL_ROUND" "$DROP_ROUND" "$DROP_STAGE" <<'PY' || fail "scenario 2 round history"
import json, sys
h = json.load(open(sys.argv[1])); k = int(sys.argv[2]); dr = int(sys.argv[3]); stage = sys.argv[4]
train = [r for r in h if r["kind"] == "train"]
assert len(train) == 12 and all(r["success"] for r in train), f"training rounds: {[(r['round'], r['success'], r['message']) for r in train]}"
assert all(r["success"] for r in h), f"failed rounds: {[r for r in h if not r['success']]}"
before = [r for r in h if r["round"] < k]
assert before and all(r["cohort"] == 5 and r["survivors"] == 5 for r in before), "the rounds before the kill did not run with all five hospitals"
assert k <= dr <= k + 1, f"hospital-b dropped in round {dr}, expected round {k} or {k + 1}"
d = next(r for r in h if r["round"] == dr)
assert d["success"] and d["cohort"] == 5, f"round {dr}: {d}"
# Where it vanished decides what the survivors had to do:
#   advertise-keys/share-keys: no one's masks involve it yet; the round goes
#     on with the other 4;
#   masked-input: the survivors' inputs carry pairwise masks with it; its
#     mask key is rebuilt from their shares to remove them;
#   consistency/unmask: its input is in the sum (the other 4 signed the
#     survivor set, a quorum); its self-mask seed is rebuilt likewise.
how = {
    "advertise-keys": "it left before sharing keys; the round went on with the other 4",
    "share-keys": "it left before its key shares were out; the round went on with the other 4",
    "masked-input": "the sum holds the 4 survivors' inputs; their masks with hospital-b were removed "
                    "with its mask key, rebuilt from their shares",
    "consistency": "its masked input was in; the 4 others signed the survivor set and its "
                   "self-mask seed was rebuilt from their shares",
    "unmask": "its masked input was in; its self-mask seed was rebuilt from the 4 survivors' shares",
}[stage]
assert d["survivors"] == (5 if stage in ("consistency", "unmask") else 4), d
print(f"PASS round {dr} ({d['kind']}) lost hospital-b at stage {stage} and still completed "
      f"(dropout recovery: {how}) in {d['duration_secs']:.1f} s")
after = [r for r in h if r["round"] > dr]
assert after and all(r["success"] and r["cohort"] == 4 and r["survivors"] == 4 for r in after), f"rounds after: {after}"
print(f"PASS the next {len(after)} rounds ran with the 4 remaining hospitals and completed")
ev = [r for r in h if r["kind"] == "evaluate"]
if ev and ev[-1]["accuracy"] is not None:
    print(f"     final held-out accuracy after the dropout: {ev[-1]['accuracy']:.4f}")
PY
timeout 120 "${DC[@]}" -p "$P2" "${F2[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

# ------------------------------------------------------------ scenario 3
t=$(date +%s)
log "scenario 3: two coordinators on SeaweedFS, the active one killed (tests/compose/failover.sh)"
tests/compose/failover.sh || fail "scenario 3 (failover)"
S3_SECS=$(($(date +%s) - t))

echo "---- compose test summary ----"
echo "image          $CONFIDE_IMAGE $((IMAGE_BYTES / 1024 / 1024)) MiB ($IMAGE_BYTES bytes), build ${IMAGE_SECS} s"
echo "scenario 1     ${S1_SECS} s (3 hospitals)"
echo "scenario 2     ${S2_SECS} s (5 hospitals, hospital-b killed in round $KILL_ROUND)"
echo "scenario 3     ${S3_SECS} s (2 coordinators, the active one killed)"
echo "wall time      $(($(date +%s) - T0)) s"
log "PASS"
