#!/usr/bin/env bash
# Installs everything the harness needs on a fresh Debian 12 machine, as root:
# RabbitMQ (the local backend), the Docker engine and tools (the docker backend),
# a virtualenv in .venv with the project and its dev tools. Idempotent.
# Set HARNESS_NO_DOCKER=1 to skip the Docker engine and images.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3 python3-venv python3-pip)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
command -v rabbitmq-server >/dev/null || need_apt+=(rabbitmq-server)
command -v curl >/dev/null || need_apt+=(curl)
# Debian's Chromium, headless: the tests open report.html in a real browser.
command -v chromium >/dev/null || need_apt+=(chromium fonts-liberation)
if [ "${HARNESS_NO_DOCKER:-0}" != 1 ]; then
  command -v dockerd >/dev/null || need_apt+=(docker.io)
  command -v iptables >/dev/null || need_apt+=(iptables)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
  command -v docker-compose >/dev/null || need_apt+=(docker-compose)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a system-wide node on 5672; the harness runs its own
# private nodes and never uses that one, so stop it to keep the machine quiet.
if pgrep -u rabbitmq -f 'beam.*rabbit@' >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null; then
  timeout 30 rabbitmqctl stop >/dev/null 2>&1 || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,load]'

if [ "${HARNESS_NO_DOCKER:-0}" != 1 ]; then
  PATH="$PWD/.venv/bin:$PATH" bash .ci/docker-setup.sh
fi
echo "setup: ready (activate with: . .venv/bin/activate)"
