#!/usr/bin/env bash
# Install and start a Docker engine (idempotent), then build the harness images offline.
# Run as root on Debian 12. Env: SKIP_IMAGES=1 skips the image build step.
set -euo pipefail

DOCKERD_LOG=/var/log/dockerd.log
WAIT_S=60

fail() { echo "docker-setup: $*" >&2; exit 1; }

need=()
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if ((${#need[@]})); then
    echo "docker-setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed"
    apt-get install -y -qq "${need[@]}" >/dev/null || fail "apt-get install ${need[*]} failed"
fi

if ! timeout 10 docker info >/dev/null 2>&1; then
    if [[ -f /var/run/docker.pid ]]; then
        pid=$(cat /var/run/docker.pid 2>/dev/null || true)
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            echo "docker-setup: dockerd (pid $pid) runs but does not answer yet; waiting"
        else
            rm -f /var/run/docker.pid
        fi
    fi
    if ! [[ -f /var/run/docker.pid ]]; then
        echo "docker-setup: starting dockerd (log: $DOCKERD_LOG)"
        setsid nohup dockerd --storage-driver=overlay2 >"$DOCKERD_LOG" 2>&1 </dev/null &
        disown || true
    fi
    ok=0
    for ((i = 0; i < WAIT_S; i++)); do
        if timeout 5 docker info >/dev/null 2>&1; then ok=1; break; fi
        sleep 1
    done
    if ((ok == 0)); then
        tail -n 20 "$DOCKERD_LOG" >&2 || true
        fail "dockerd did not answer 'docker info' within ${WAIT_S} s (see $DOCKERD_LOG)"
    fi
fi
echo "docker-setup: engine up ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"

if [[ "${SKIP_IMAGES:-0}" != "1" ]]; then
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ -f "$repo/harness/images.py" ]]; then
        (cd "$repo" && python3 -c 'import sys; from harness.images import images_main; sys.exit(images_main(["build", "--offline", "--examples"]))') \
            || fail "building the harness images failed (see above)"
    fi
fi
