#!/usr/bin/env bash
# WebRTC benchmark (docs/benchmarks.md, "WebRTC"): builds the release binary, starts it on the
# shipped conf.toml with the demo clip (ports 18290/18291, WebRTC UDP 18289, all on 127.0.0.1),
# runs bench/webrtc/bench.mjs (50 joins, then server CPU with 10 WebRTC and 10 MSE viewers) and
# prints its JSON line. Needs Chromium and e2e/node_modules (npm ci in e2e/), as the e2e tests.
#
#   bench/webrtc/run.sh                 # JOINS, VIEWERS, MEASURE_S pass through to bench.mjs
#   PROFILE=dev bench/webrtc/run.sh     # a debug build (numbers not comparable)
#   BIN=/path/to/video-server bench/webrtc/run.sh   # a binary built before (A/B of two commits)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
profile=${PROFILE:-release}
cd "$root"
if [ -n "${BIN:-}" ]; then
    bin=$(realpath "$BIN")
else
    cargo build --profile "$profile" --bin video-server >&2
    dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
    bin="$root/target/$dir/video-server"
fi

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
sed -e 's/^port = 8091/port = 18291/' -e 's/^port = 8090/port = 18290/' \
    -e 's/^udp_port = 8189/udp_port = 18289/' conf.toml >"$work/conf.toml"
mkdir "$work/assets"
cp assets/demo.mp4 "$work/assets/"
(cd "$work" && exec "$bin" --conf conf.toml >"$work/server.log" 2>&1) &
server_pid=$!
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:18290/api/v1/server >/dev/null && break
    sleep 0.2
done
# The demo stream of the shipped conf.toml.
stream=$(grep -m1 -A2 '^\[\[local_files\]\]' conf.toml | sed -n 's/^guid = "\(.*\)"/\1/p')
VIDEO_ADDR=127.0.0.1:18290 STREAM_ID="$stream" SERVER_PID="$server_pid" \
    node --experimental-websocket bench/webrtc/bench.mjs
