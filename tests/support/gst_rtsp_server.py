#!/usr/bin/python3
"""RTSP test server for the video-server test suite, built on GStreamer's RTSP server.

Run it with Debian's interpreter (the GObject bindings live there, not in a venv):

    /usr/bin/python3 tests/support/gst_rtsp_server.py [--port 8554] [--host 127.0.0.1]
        [--file PATH.mp4] [--auth USER:PASS] [--only tcp|udp] [--exit-on-stdin-eof]

Debian 12 packages: gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-{base,good,ugly,bad}
gstreamer1.0-libav.

Mounts (all video 640x360 @ 25 fps, one keyframe every 25 frames = 1 s):

    /test     H.264 constrained baseline (x264enc, 2 slices per picture), video only
    /av       H.264 as /test + AAC-LC 48 kHz mono (avenc_aac)
    /h265     H.265 main (x265enc, closed GOP: every keyframe is an IDR, NAL type 20)
    /g711     H.264 as /test + G.711 mu-law 8 kHz mono audio (PCMU, what many cameras send)
    /h265cra  H.265 main (x265enc default open GOP: every keyframe after the very first is a CRA,
              NAL type 21, and that first IDR is usually produced before the client's PLAY, so a
              client typically sees CRA keyframes only)
    /file     only with --file: the MP4's H.264 video (and its AAC audio if it has one), played in
              real time from the start for every client (not shared), ends with the file; an
              MPEG-TS file (name ending in .ts) is served video only with its in-band parameter
              sets, so parameter changes inside the file (a resolution switch) reach the client

The live mounts are shared: every client of a mount sees the same encoder output, so a client that
joins later starts mid-GOP (at most 1 s before the next keyframe). Parameter sets are in the SDP
(sprop-*) and repeated in-band before every keyframe of the live mounts.

--auth USER:PASS makes every mount require those credentials (401 otherwise), for testing URLs
like rtsp://user:pass@127.0.0.1:PORT/av.

--only udp (or tcp) offers only that lower transport in SETUP (RTP over UDP, or interleaved in
the RTSP connection): a client asking for the other one is refused (461 Unsupported transport).

--port 0 picks a free port. Once the server listens, this line is printed on stdout:

    READY rtsp://127.0.0.1:<port>

After it, every change in the number of connected clients (established TCP connections to the
server's port, whatever the mount, from the kernel's socket table; checked every 200 ms and at each
connect) prints one line on stdout, so a test can check how many sessions a client holds open:

    CLIENTS <n>

Everything else (mount list, warnings) goes to stderr.

With --exit-on-stdin-eof, stdin also takes commands, one per line (for fault tests):

    kick    disconnect every client now (a camera that drops its connections)
    down    disconnect every client and refuse new ones until `up` (a camera that is off)
    up      accept clients again
 SIGTERM or SIGINT (and, with
--exit-on-stdin-eof, the end of stdin — e.g. the test process died) disconnects the clients and
exits with status 0.
"""

import argparse
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

FPS = 25
KEYINT = 25
WIDTH, HEIGHT = 640, 360

RAW_VIDEO = (
    "videotestsrc is-live=true pattern=ball "
    f"! video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1"
)
H264_ENC = (
    f"x264enc tune=zerolatency speed-preset=ultrafast threads=2 key-int-max={KEYINT} bitrate=1000 "
    "! video/x-h264,profile=constrained-baseline "
    "! h264parse "
    "! rtph264pay pt=96 name=pay0"
)
AAC_AUDIO = (
    "audiotestsrc is-live=true wave=sine freq=440 "
    "! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 "
    "! avenc_aac bitrate=64000 "
    "! rtpmp4gpay pt=97 name=pay1"
)

G711_AUDIO = (
    "audiotestsrc is-live=true wave=sine freq=440 "
    "! audioconvert ! audioresample ! audio/x-raw,rate=8000,channels=1 "
    "! mulawenc ! rtppcmupay pt=0 name=pay1"
)


def h265_enc(closed_gop: bool) -> str:
    # repeat-headers=1: VPS/SPS/PPS in-band before every keyframe, as x264 does by default (and as
    # cameras do). It does not change the GOP structure.
    options = "open-gop=0:repeat-headers=1" if closed_gop else "repeat-headers=1"
    return (
        f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={KEYINT} bitrate=1000 option-string={options} "
        "! video/x-h265,profile=main "
        "! h265parse "
        "! rtph265pay pt=96 name=pay0"
    )


def live_mounts() -> dict:
    return {
        "/test": f"( {RAW_VIDEO} ! {H264_ENC} )",
        "/av": f"( {RAW_VIDEO} ! {H264_ENC} {AAC_AUDIO} )",
        "/g711": f"( {RAW_VIDEO} ! {H264_ENC} {G711_AUDIO} )",
        "/h265": f"( {RAW_VIDEO} ! {h265_enc(closed_gop=True)} )",
        "/h265cra": f"( {RAW_VIDEO} ! {h265_enc(closed_gop=False)} )",
    }


def file_has_aac(path: str) -> bool:
    """True when the file has an AAC audio stream (checked with GstPbutils' discoverer)."""
    try:
        gi.require_version("GstPbutils", "1.0")
        from gi.repository import GstPbutils

        info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(Gst.filename_to_uri(path))
        for stream in info.get_audio_streams():
            caps = stream.get_caps()
            if caps is None or caps.get_size() == 0:
                continue
            s = caps.get_structure(0)
            ok, version = s.get_int("mpegversion")
            if s.get_name() == "audio/mpeg" and ok and version in (2, 4):
                return True
    except Exception as exc:  # discovery is a nicety; fall back to video only
        log(f"warning: could not inspect {path} ({exc}); serving its video only")
    return False


def file_mount(path: str) -> str:
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    if path.lower().endswith(".ts"):
        # An MPEG-TS file carries its parameter sets in-band, so it can change them mid-file (e.g.
        # two encodings of different sizes concatenated): the client sees a camera switching
        # resolution. config-interval=-1 repeats SPS/PPS before every keyframe.
        return (
            f'( filesrc location="{location}" ! tsdemux ! h264parse '
            "! rtph264pay config-interval=-1 pt=96 name=pay0 )"
        )
    launch = (
        f'( filesrc location="{location}" ! qtdemux name=demux '
        "demux.video_0 ! queue ! h264parse ! rtph264pay pt=96 name=pay0"
    )
    if file_has_aac(path):
        launch += " demux.audio_0 ! queue ! aacparse ! rtpmp4gpay pt=97 name=pay1"
    return launch + " )"


def established_connections(port: int) -> int:
    """Established TCP connections whose local port is `port` (this server's side of each client
    connection), from /proc/net/tcp and /proc/net/tcp6."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    local, st = fields[1], fields[3]
                    if st == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


def log(message: str) -> None:
    print(f"gst_rtsp_server: {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description="GStreamer RTSP test server (see module docstring)")
    p.add_argument("--port", type=int, default=8554, help="TCP port, 0 = any free port (default 8554)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--file", metavar="PATH", help="also serve this H.264 MP4 at /file")
    p.add_argument("--auth", metavar="USER:PASS", help="require HTTP Basic/RTSP credentials on every mount")
    p.add_argument("--only", choices=["tcp", "udp"], help="offer only this RTP transport")
    p.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="exit when stdin reaches end of file (the parent closed the pipe or died)",
    )
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    if args.file is not None:
        args.file = os.path.abspath(args.file)
        if not os.path.isfile(args.file):
            p.error(f"--file {args.file}: no such file")
    if args.auth is not None and ":" not in args.auth:
        p.error("--auth must be USER:PASS")
    return args


def make_auth(user_pass: str):
    user, password = user_pass.split(":", 1)
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "tester")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    return auth


def main(argv) -> int:
    args = parse_args(argv)
    Gst.init(None)

    mounts = live_mounts()
    if args.file:
        mounts["/file"] = file_mount(args.file)

    server = GstRtspServer.RTSPServer()
    # GStreamer's default listen backlog is 5: when dozens of clients connect at once (a benchmark
    # starting 200 cameras), the kernel completes connections the server has no room to accept and
    # their requests wait for SYN-ACK retransmissions, seconds each. A deep backlog lets them all in.
    server.set_backlog(1024)
    server.set_address(args.host)
    server.set_service(str(args.port))
    if args.auth:
        server.set_auth(make_auth(args.auth))

    mount_points = server.get_mount_points()
    for path, launch in mounts.items():
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(path != "/file")
        if args.only == "udp":
            factory.set_protocols(GstRtsp.RTSPLowerTrans.UDP)
        elif args.only == "tcp":
            factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        if args.auth:
            factory.add_role_from_structure(
                Gst.Structure.from_string(
                    "tester, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )[0]
            )
        mount_points.add_factory(path, factory)

    loop = GLib.MainLoop()

    state = {"clients": -1, "down": False}

    def report() -> bool:
        # Established TCP connections on our port, from the kernel's socket table: GStreamer's own
        # client list keeps closed clients around for a while, so it overcounts.
        n = established_connections(server.get_bound_port())
        if n != state["clients"]:
            state["clients"] = n
            print(f"CLIENTS {n}", flush=True)
        return GLib.SOURCE_CONTINUE

    def on_client(_server, client) -> None:
        if state["down"]:
            client.close()
        GLib.idle_add(lambda: (report(), GLib.SOURCE_REMOVE)[1])

    GLib.timeout_add(200, report)
    server.connect("client-connected", on_client)

    def kick_all() -> None:
        server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
        report()

    def command(line: str) -> None:
        if line == "kick":
            kick_all()
        elif line == "down":
            state["down"] = True
            kick_all()
        elif line == "up":
            state["down"] = False
        elif line:
            log(f"unknown command {line!r}")

    def shutdown(reason: str) -> bool:
        if loop.is_running():
            log(f"{reason}: shutting down")
            loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, shutdown, "SIGTERM")
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, shutdown, "SIGINT")
    if args.exit_on_stdin_eof:
        pending = bytearray()

        def on_stdin(channel, condition):
            if condition & (GLib.IOCondition.HUP | GLib.IOCondition.ERR):
                return shutdown("stdin closed")
            data = os.read(channel.unix_get_fd(), 4096)
            if not data:
                return shutdown("stdin closed")
            pending.extend(data)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                command(line.decode("utf-8", "replace").strip())
            return GLib.SOURCE_CONTINUE

        channel = GLib.IOChannel.unix_new(sys.stdin.fileno())
        GLib.io_add_watch(
            channel, GLib.PRIORITY_DEFAULT, GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR, on_stdin
        )

    try:
        server.attach(None)
    except GLib.Error as exc:
        log(f"cannot listen on {args.host}:{args.port}: {exc.message}")
        return 1
    port = server.get_bound_port()
    if port <= 0:
        log(f"cannot listen on {args.host}:{args.port}")
        return 1

    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    log("mounts: " + ", ".join(f"rtsp://{shown_host}:{port}{path}" for path in mounts))
    print(f"READY rtsp://{shown_host}:{port}", flush=True)

    loop.run()

    # Close every client session (and with them the media pipelines) before leaving.
    server.client_filter(lambda _server, _client: GstRtspServer.RTSPFilterResult.REMOVE)
    ctx = GLib.MainContext.default()
    while ctx.pending():
        ctx.iteration(False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
