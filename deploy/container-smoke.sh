#!/usr/bin/env bash
# Builds the top-level Dockerfile unchanged and serves from the image it makes,
# on a machine with podman but no container engine that can run containers:
#
#   1. the base image debian:bookworm-slim, made with debootstrap if podman
#      does not have it (base images cannot be pulled here);
#   2. podman build --isolation=chroot of the real Dockerfile;
#   3. podman create + podman export: the image's root file system;
#   4. in fresh mount/network/PID namespaces (so the image's own 0.0.0.0:50051
#      and :9464 see only a private loopback), the image's ENTRYPOINT + CMD
#      with its ENV, USER and WORKDIR, chrooted into that file system;
#   5. the image's own HEALTHCHECK command must print SERVING, one generation
#      through matformer-cli must return text, /metrics must count it;
#   6. SIGTERM: the server must drain and exit 0.
#
# Usage (root): deploy/container-smoke.sh
# Environment: MATFORMER_CONTAINER_WORK (scratch dir, kept; default: a new
# /var/tmp/matformer-container.XXXXXX, removed after a pass, kept after a
# failure for its logs), DEBIAN_MIRROR, STARTUP_TIMEOUT_S (default 300),
# BUILD_ARGS (extra `podman build` arguments, e.g. "--build-arg BUILD_JOBS=1").
# Not part of CI: see deploy/README.md for how long it takes.
set -euo pipefail

log() { echo "container-smoke: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Step 4-6 run here, inside the namespaces (re-entered by step 4 below).
inside() {
  local rootfs=$1 config=$2 logfile=$3 timeout_s=$4
  ip link set lo up
  # A private /proc (this PID namespace), /dev with the few nodes a process
  # expects, and /sys (OpenMP reads the CPU topology there).
  mount -t proc proc "$rootfs/proc"
  mount -t tmpfs -o mode=755 tmpfs "$rootfs/dev"
  for node in null zero random urandom; do
    touch "$rootfs/dev/$node"
    mount --bind "/dev/$node" "$rootfs/dev/$node"
  done
  mount --rbind /sys "$rootfs/sys"
  mkdir -p "$rootfs/dev/shm" && mount -t tmpfs tmpfs "$rootfs/dev/shm"

  # The image's configuration (written by step 4 as shell arrays).
  # shellcheck disable=SC1090
  source "$config"
  local uid gid
  uid=$(awk -F: -v u="${USER_NAME}" '$1 == u || $3 == u {print $3; exit}' "$rootfs/etc/passwd")
  gid=$(awk -F: -v g="${GROUP_NAME:-$USER_NAME}" '$1 == g || $3 == g {print $3; exit}' "$rootfs/etc/group")
  [ -n "$uid" ] && [ -n "$gid" ] || die "image USER '${USER_NAME}' not found in its /etc/passwd or /etc/group"
  [ "$uid" -ne 0 ] || die "image runs as root (USER is '${USER_NAME}')"
  # Runs a command as the image's user, with its environment and working
  # directory. exec: `in_image ... &` must leave $! as the server's own PID.
  in_image() {
    exec chroot --userspec="$uid:$gid" "$rootfs" /usr/bin/env -i "${IMAGE_ENV[@]}" /bin/sh -c 'cd "$0" && exec "$@"' \
      "$WORKING_DIR" "$@"
  }

  log "server: ${COMMAND[*]} (as uid $uid)"
  in_image "${COMMAND[@]}" >"$logfile" 2>&1 &
  local server=$!
  local deadline=$((SECONDS + timeout_s))
  until grep -q "listening on" "$logfile"; do
    kill -0 "$server" 2>/dev/null || { cat "$logfile" >&2; die "server exited during start-up"; }
    [ $SECONDS -lt $deadline ] || { kill -KILL "$server"; cat "$logfile" >&2; die "not listening after ${timeout_s}s"; }
    sleep 1
  done
  log "$(grep -m1 "listening on" "$logfile")"

  local health
  health=$(in_image "${HEALTHCHECK[@]}" 2>&1) || { kill -KILL "$server"; die "HEALTHCHECK failed: $health"; }
  echo "$health" | grep -q "SERVING" || { kill -KILL "$server"; die "HEALTHCHECK printed '$health'"; }
  log "HEALTHCHECK (${HEALTHCHECK[*]}): $health"

  local reply
  reply=$(in_image /opt/matformer/bin/matformer-cli generate --target=127.0.0.1:50051 --prompt "And God said" \
    --max_new_tokens=12 --tier=batch --deadline=60s --json 2>&1) || { kill -KILL "$server"; die "generate failed: $reply"; }
  echo "$reply" | /usr/bin/python3 -c '
import json, sys
reply = json.loads(sys.stdin.read())
assert reply.get("text"), "no text in %r" % reply
print("container-smoke: generated %r on %s" % (reply["text"], reply.get("submodel", {}).get("name", "?")), file=sys.stderr)
' || { kill -KILL "$server"; die "bad generate reply: $reply"; }

  # The metrics endpoint of the image (host Python, same network namespace).
  /usr/bin/python3 - <<'PY' || { kill -KILL "$server"; die "metrics check failed"; }
import re, sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9464/metrics", timeout=10).read().decode()
ok = sum(float(v) for v in re.findall(r'^matformer_requests_total\{[^}]*code="OK"[^}]*\} (\S+)$', text, re.M))
assert ok >= 1, "matformer_requests_total{code=OK} is %s" % ok
print("container-smoke: /metrics counts %d OK request(s)" % ok, file=sys.stderr)
PY

  kill -TERM "$server"
  local code=0
  wait "$server" || code=$?
  [ "$code" -eq 0 ] || { cat "$logfile" >&2; die "server exited $code after SIGTERM"; }
  log "SIGTERM: server drained and exited 0"
}

if [ "${1:-}" = "--inside" ]; then
  shift
  inside "$@"
  exit 0
fi

# ---------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and namespaces need it)"
cd "$(dirname "$0")/.."
REPO=$PWD
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=debian:bookworm-slim
# The tag keeps the last build (and so its layers, the build cache) alive;
# this run uses its own image by ID, so that two runs on one machine (two
# worktrees, CI) cannot swap images.
TAG=localhost/matformer-server:smoke
if [ -n "${MATFORMER_CONTAINER_WORK:-}" ]; then
  WORK=$MATFORMER_CONTAINER_WORK
  mkdir -p "$WORK"
else
  WORK=$(mktemp -d /var/tmp/matformer-container.XXXXXX)
fi
passed=0
cleanup() {
  if [ "$passed" = 1 ] && [ -z "${MATFORMER_CONTAINER_WORK:-}" ]; then
    rm -rf "$WORK"   # the namespaces' mounts went with them: only files are left
  else
    log "scratch directory kept: $WORK"
  fi
}
trap cleanup EXIT
scripts/install-deps.sh --container
start=$SECONDS

# 1. Base image.
if podman image exists "$BASE"; then
  log "base image $BASE present"
else
  log "making $BASE with debootstrap from $MIRROR"
  rm -rf "$WORK/base"
  debootstrap --variant=minbase bookworm "$WORK/base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
  # Like the official slim image: no package lists or caches inside.
  rm -rf "$WORK/base/var/lib/apt/lists/"* "$WORK/base/var/cache/apt/"*.bin
  tar -C "$WORK/base" -c . | podman import - "$BASE" >/dev/null
  rm -rf "$WORK/base"
  log "base image made in $((SECONDS - start))s"
fi

# 2. The real Dockerfile, unchanged. Docker format keeps the HEALTHCHECK (OCI has none).
build_start=$SECONDS
# shellcheck disable=SC2086
podman build --isolation=chroot --format=docker ${BUILD_ARGS:-} -t "$TAG" --iidfile "$WORK/image-id" \
  -f "$REPO/Dockerfile" "$REPO" \
  >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; die "podman build failed (log: $WORK/build.log)"; }
IMAGE=$(cat "$WORK/image-id")
log "podman build: $((SECONDS - build_start))s, $(grep -c "Using cache" "$WORK/build.log") steps cached (log: $WORK/build.log)"
# Images of earlier builds lose the tag; those older than a day (earlier
# sources; layers still used by the tagged image stay) go, so the disk does not fill.
podman image prune -f --filter until=24h >/dev/null
log "image size: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# 3. The image's root file system.
rootfs=$WORK/rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs"
container=$(podman create "$IMAGE" 2>>"$WORK/podman.log") || die "podman create failed (log: $WORK/podman.log)"
podman export "$container" | tar -C "$rootfs" -x
# (podman's "unable to get systemd connection to remove healthchecks" goes to
# the log: there is no systemd here, and nothing was scheduled.)
podman rm "$container" >/dev/null 2>>"$WORK/podman.log"
# The runtime stage carries no toolchain and no headers (the build stage's -dev packages).
for leftover in usr/bin/g++ usr/bin/cmake usr/bin/protoc usr/include/grpcpp usr/include/oneapi; do
  [ ! -e "$rootfs/$leftover" ] || die "the runtime image contains /$leftover: build-stage files leaked into it"
done
[ -x "$rootfs/opt/matformer/bin/matformer-server" ] || die "the image has no /opt/matformer/bin/matformer-server"

# 4. The image's configuration as shell arrays for the inside step.
config=$WORK/image-config.sh
podman image inspect "$IMAGE" | /usr/bin/python3 -c '
import json, shlex, sys
image = json.load(sys.stdin)[0]
config = image["Config"]
health = config.get("Healthcheck") or image.get("Healthcheck") or {}
test = health.get("Test") or []
if not test or test[0] not in ("CMD", "CMD-SHELL"):
    sys.exit("container-smoke: FAIL: the image has no HEALTHCHECK (built without --format=docker?)")
health_cmd = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
command = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
if not command:
    sys.exit("container-smoke: FAIL: the image has no ENTRYPOINT/CMD")
user, _, group = (config.get("User") or "root").partition(":")
def array(name, items):
    print("%s=(%s)" % (name, " ".join(shlex.quote(i) for i in items)))
array("COMMAND", command)
array("HEALTHCHECK", health_cmd)
array("IMAGE_ENV", config.get("Env") or [])
print("USER_NAME=%s" % shlex.quote(user))
print("GROUP_NAME=%s" % shlex.quote(group))
print("WORKING_DIR=%s" % shlex.quote(config.get("WorkingDir") or "/"))
' >"$config"

# 5-6. Serve from it in private namespaces; mounts and sockets vanish with them.
run_start=$SECONDS
unshare --mount --net --pid --fork --propagation private \
  "$REPO/deploy/container-smoke.sh" --inside "$rootfs" "$config" "$WORK/server.log" "${STARTUP_TIMEOUT_S:-300}"
log "serve + checks: $((SECONDS - run_start))s"
passed=1
log "PASS in $((SECONDS - start))s"
