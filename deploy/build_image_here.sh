#!/usr/bin/env bash
# Build and run the Docker image on a machine that reaches only package registries (no Docker Hub): what was
# done on 2026-11-30 to try the Dockerfile for real. Needs root. Not run by CI: it installs docker.io and
# debootstraps a base image (~3 min) before the build (~4 min).
#
#   1. dockerd from Debian's docker.io, with no bridge network (nothing on 172.17/16; containers use the host's
#      loopback), its state under /tmp.
#   2. A stand-in for python:3.11-slim: Debian bookworm (python3 3.11) by debootstrap, plus this machine's extra
#      CA certificates (pip's HTTPS goes through the sandbox's egress proxy), imported and tagged
#      python:3.11-slim so the Dockerfile builds unchanged.
#   3. docker build --network host; docker run --network host on a loopback port; probes; docker stop.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/rag-image-build}
PORT=${PORT:-18977}
export DOCKER_HOST=unix://$WORK/docker.sock
mkdir -p "$WORK"
command -v dockerd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
dockerd --host "$DOCKER_HOST" --data-root "$WORK/root" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
  --bridge=none --iptables=false --ip-masq=false >"$WORK/dockerd.log" 2>&1 &
trap 'docker rm -f rag-try >/dev/null 2>&1 || true; kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null || true' EXIT
for _ in $(seq 50); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  rm -rf "$WORK/base"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
    bookworm "$WORK/base" http://deb.debian.org/debian >"$WORK/debootstrap.log"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/base/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$WORK/base" update-ca-certificates >/dev/null
  rm -rf "$WORK"/base/var/cache/apt/archives/*.deb "$WORK"/base/var/lib/apt/lists/*
  tar -C "$WORK/base" -c . | docker import - python:3.11-slim
fi
DOCKER_BUILDKIT=0 docker build --network host -t rag-sidecar:local "$ROOT"
docker image ls rag-sidecar:local
docker run -d --name rag-try --network host -e RAG_SIDECAR__SERVER__HOST=127.0.0.1 \
  -e RAG_SIDECAR__SERVER__PORT="$PORT" -e RAG_SIDECAR__TELEMETRY__STATSD_ENABLED=false \
  rag-sidecar:local serve --workers 2
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 1; done
curl -sf -XPOST -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/v1/query" \
  -d '{"query": "how do I read a csv file"}' | head -c 300; echo
time docker stop -t 20 rag-try
echo "exit code: $(docker inspect rag-try --format '{{.State.ExitCode}}')"
