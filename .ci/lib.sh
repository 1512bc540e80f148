# Shared helpers for the .ci scripts: idempotent installs, a running Docker
# engine, a Redis 7 image for testcontainers and the preparation of a test run.
# Sourced, never run.

# Every test container carries the label sms-alerts-test=1 and the id of the run
# that started it (sms-alerts-test.run, the PID of that .ci/test), so leftovers of a
# killed run can be removed without touching a run still going on beside it.
SMS_TEST_LABEL="sms-alerts-test=1"
SMS_TEST_RUN_LABEL="sms-alerts-test.run"
export SMS_TEST_RUN_ID="${SMS_TEST_RUN_ID:-$$}"

log() { printf '==> %s\n' "$*" >&2; }

# apt_install PKG... installs the Debian packages that are missing, quietly.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_redis_server makes sure redis-server and redis-cli are on PATH.
ensure_redis_server() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  # Only the binaries are used: the demo and the tests start Redis on ports of
  # their own, so a system-wide service Debian may start on 6379 is left alone.
  apt_install redis-server redis-tools
}

# ensure_docker makes sure a Docker engine answers, starting dockerd if needed.
ensure_docker() {
  if ! command -v dockerd >/dev/null; then
    apt_install docker.io
  fi
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd"
  nohup dockerd >/tmp/sms-alerts-dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "dockerd did not start; see /tmp/sms-alerts-dockerd.log"
  tail -20 /tmp/sms-alerts-dockerd.log >&2
  return 1
}

# import_image NAME ENTRYPOINT SRC[:DEST]... builds an image without a registry:
# each file or directory SRC at DEST (default: the same path), plus every
# shared library the files link, imported as a root filesystem with ENTRYPOINT.
import_image() {
  local image=$1 entrypoint=$2 dir spec src dest lib
  shift 2
  dir=$(mktemp -d)
  mkdir -p "$dir/data" "$dir/tmp"
  for spec in "$@"; do
    src=${spec%%:*}
    dest=${spec#*:}
    mkdir -p "$dir$(dirname "$dest")"
    cp -rL "$src" "$dir$dest"
    [ -f "$src" ] || continue
    ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  done
  tar -C "$dir" -c . | docker import \
    --change "ENTRYPOINT [\"$entrypoint\"]" \
    --change 'WORKDIR /data' - "$image" >/dev/null
  rm -rf "$dir"
}

# build_local_redis_image NAME builds a Redis image from the host's redis-server.
build_local_redis_image() {
  ensure_redis_server
  import_image "$1" /usr/bin/redis-server "$(command -v redis-server)"
}

# ensure_redis_image picks the Redis image the tests run on and exports it as
# SMS_TEST_REDIS_IMAGE: the caller's choice if set, else the official redis:7 if it
# is here or can be pulled, else one built locally from the host's redis-server.
ensure_redis_image() {
  if [ -n "${SMS_TEST_REDIS_IMAGE:-}" ]; then
    docker image inspect "$SMS_TEST_REDIS_IMAGE" >/dev/null 2>&1 || docker pull -q "$SMS_TEST_REDIS_IMAGE" >/dev/null
    export SMS_TEST_REDIS_IMAGE
    return 0
  fi
  local official="redis:7" local_image="sms-alerts/redis:7-local"
  if docker image inspect "$official" >/dev/null 2>&1; then
    export SMS_TEST_REDIS_IMAGE=$official
  elif docker image inspect "$local_image" >/dev/null 2>&1; then
    export SMS_TEST_REDIS_IMAGE=$local_image
  elif timeout 20 docker pull -q "$official" >/dev/null 2>&1; then
    export SMS_TEST_REDIS_IMAGE=$official
  else
    log "no registry reachable: building $local_image from the host's redis-server"
    build_local_redis_image "$local_image"
    export SMS_TEST_REDIS_IMAGE=$local_image
  fi
  log "tests run on the Redis image $SMS_TEST_REDIS_IMAGE"
}

# remove_leftover_containers removes test containers whose run is over: this
# run's own (on exit), and those of runs whose process is gone (killed runs).
remove_leftover_containers() {
  local id run stale=()
  while read -r id run; do
    [ -n "$id" ] || continue
    if [ "$run" = "$SMS_TEST_RUN_ID" ] || ! [[ "$run" =~ ^[0-9]+$ ]] || ! kill -0 "$run" 2>/dev/null; then
      stale+=("$id")
    fi
  done < <(docker ps -a --filter "label=$SMS_TEST_LABEL" --format "{{.ID}} {{.Label \"$SMS_TEST_RUN_LABEL\"}}")
  [ ${#stale[@]} -eq 0 ] && return 0
  log "removing ${#stale[@]} test container(s) of finished or killed runs"
  docker rm -f "${stale[@]}" >/dev/null
}

# prepare_test_run sets up everything the whole suite needs, for .ci/test and
# .ci/coverage alike: the tools the tests call, a running Docker engine, the
# Redis image, no leftovers of killed runs (and this run's own removed on exit).
prepare_test_run() {
  ensure_redis_server
  # The live display runs in tmux; compose validates docker-compose.yml; tests/memory.rs
  # reads the audit's peak RSS from GNU time; tests/dashboard.rs loads the dashboard in
  # headless Chromium.
  apt_install tmux docker-compose time chromium
  ensure_docker
  ensure_redis_image
  remove_leftover_containers
  trap remove_leftover_containers EXIT
  # The compose tests may only skip where no compose CLI exists; here one does.
  export SMS_REQUIRE_COMPOSE=1
}
