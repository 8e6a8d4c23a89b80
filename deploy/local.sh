#!/usr/bin/env bash
# Redis and two `singlepoint serve` replicas on loopback, sharing answers through Redis:
#   deploy/local.sh            # redis on 6380, replicas on 8001 and 8002 (Ctrl-C stops all)
#   curl --data-binary @photos/chelsea.png localhost:8001/v1/models/efficientnet-lite0/classify
#   curl --data-binary @photos/chelsea.png localhost:8002/v1/models/efficientnet-lite0/classify  # "cached": true
# Needs redis-server (apt-get install redis-server) and `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SINGLEPOINT_BIN:-target/release/singlepoint}
REDIS_PORT=${REDIS_PORT:-6380}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v redis-server >/dev/null || { echo "needs redis-server: apt-get install redis-server" >&2; exit 2; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids+=($!)
for port in 8001 8002; do
  "$BIN" serve --port "$port" --cache-disk 0 --cache-redis "redis://127.0.0.1:$REDIS_PORT" \
    --cache-redis-namespace local &
  pids+=($!)
done
wait
