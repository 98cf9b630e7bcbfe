#!/usr/bin/env bash
# Proves the browser tests see the picture: serves broken copies of the demo clip in place of
# assets/demo.mp4 (E2E_DEMO_CLIP) and checks that EVERY browser test of the demo clip
# (tests/it/e2e.rs, the web UI's in tests/it/webui.rs, WebRTC's in tests/it/webrtc.rs) fails with
# each of them, while the real clip passes.
#
#   e2e/check-bad-clips.sh                 # frozen and black (the issue's check)
#   e2e/check-bad-clips.sh frozen black noisy reversed repeated
#   CHECK_TESTS="webrtc::chromium_plays_the_demo" e2e/check-bad-clips.sh   # only these tests
#
# The copies have the demo clip's codec, profile, level, GOP, frame rate, length and audio (the
# audio stream is copied), so only the picture differs:
#   frozen    the first frame for the whole clip
#   black     every frame black
#   noisy     the real picture under heavy noise (decodable, garbled)
#   reversed  the real frames in reverse order
#   repeated  the first second (one GOP) over and over
# Needs what scripts/test sets up (ffmpeg, Chromium, e2e/node_modules, Postgres).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${ROOT}"
KINDS=("$@")
[[ ${#KINDS[@]} -gt 0 ]] || KINDS=(frozen black)
WORK=$(mktemp -d)
trap 'rm -rf "${WORK}"' EXIT

# The encoding of assets/demo.mp4 (assets/README.md), applied to a filtered picture.
ENCODE=(-c:v libx264 -profile:v main -level:v 3.0 -pix_fmt yuv420p -preset medium -bf 0
    -b:v 300k -maxrate 450k -bufsize 900k -g 25 -keyint_min 25 -sc_threshold 0
    -c:a copy -t 24 -movflags +faststart -map_metadata -1 -fflags +bitexact)
filter_of() {
    case $1 in
    frozen) echo "trim=end_frame=1,loop=loop=599:size=1:start=0,setpts=N/25/TB" ;;
    black) echo "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill" ;;
    noisy) echo "noise=alls=80:allf=t" ;;
    reversed) echo "reverse" ;;
    repeated) echo "trim=end_frame=25,loop=loop=23:size=25:start=0,setpts=N/25/TB" ;;
    *) echo "unknown clip kind: $1" >&2; return 1 ;;
    esac
}
make_clip() {
    ffmpeg -v error -nostdin -y -i assets/demo.mp4 -map 0:v:0 -map 0:a:0 -vf "$(filter_of "$1")" \
        "${ENCODE[@]}" "${WORK}/$1.mp4"
}

# The browser tests that play the demo clip (webui::routes are router tests without a browser;
# the other WebRTC browser test plays the RTSP test stream). CHECK_TESTS: a subset (filters).
read -r -a TESTS <<<"${CHECK_TESTS:-e2e:: webui::operator_ webui::with_auth_ webui::tiles_ webui::sixteen_ webrtc::chromium_plays_the_demo}"

# Runs the browser tests with CLIP served (empty: the real one); prints one line per test.
run_tests() {
    local clip=$1 out
    out=$(E2E_DEMO_CLIP=${clip} cargo test --test it -- "${TESTS[@]}" --test-threads 2 2>&1 || true)
    grep -E '^test (e2e|webui|webrtc)::' <<<"${out}" | sed -E 's/^test ((e2e|webui|webrtc)::[^ ]+) \.\.\. (ok|FAILED)$/\3 \1/' | sort -k2
    # Why each failed (first reason of each verdict; whep.mjs's are its `problems`).
    grep -oE '"reason":"[^"\\]{1,160}|"problems":\[[^]]{1,300}' <<<"${out}" | sort -u | sed 's/^/    /' || true
}

cargo build --tests --quiet
status=0
echo "== the real clip (every test must pass)"
real=$(run_tests "")
echo "${real}"
grep -q '^FAILED' <<<"${real}" && status=1
grep -q '^ok' <<<"${real}" || { echo "no browser test ran"; status=1; }
for kind in "${KINDS[@]}"; do
    make_clip "${kind}"
    echo "== ${kind} clip (every test must fail)"
    res=$(run_tests "${WORK}/${kind}.mp4")
    echo "${res}"
    if grep -q '^ok' <<<"${res}"; then
        echo "   !! a browser test passed with the ${kind} clip"
        status=1
    fi
done
if [[ ${status} == 0 ]]; then echo "check passed: the browser tests fail on every broken clip"; fi
exit "${status}"
