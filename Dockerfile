# syntax=docker/dockerfile:1
#
# video-server container image.
#
#   docker build -t video-server:local .
#   docker run --rm -p 8090:8090 -p 8091:8091 -v "$PWD/conf.toml:/app/conf.toml:ro" video-server:local
#
# The config must bind to 0.0.0.0 inside the container ([api] host / [video] host), otherwise the
# published ports do not reach the server. docker-compose.yaml wires it up with Postgres and MinIO.

# ---- build -------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# The whole context (see .dockerignore): the build embeds migrations/, web/ and friends.
COPY . .

# Cache mounts keep the registry and the target directory between builds (BuildKit); the binary
# is copied out of the cached target directory because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin video-server \
    && install -D -m 0755 target/release/video-server /out/video-server

# ---- runtime -----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to S3 endpoints / rtsps cameras. No ffmpeg: the server does not need it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user owning the writable directories. Named volumes mounted on them start out
# with this ownership.
RUN groupadd --system --gid 10001 video \
    && useradd --system --uid 10001 --gid video --home-dir /app --no-create-home --shell /usr/sbin/nologin video \
    && mkdir -p /app/data /app/mp4 /app/hls \
    && chown -R video:video /app

WORKDIR /app
COPY --from=builder /out/video-server /usr/local/bin/video-server
COPY assets/ /app/assets/

USER video:video

# 8090: video (MSE/archive WebSocket, HLS, web UI); 8091: API (REST, OpenAPI, metrics, health).
EXPOSE 8090 8091 8189/udp
# data: SQLite index (when no Postgres is configured); mp4: archive segments; hls: live HLS segments.
VOLUME ["/app/data", "/app/mp4", "/app/hls"]

ENTRYPOINT ["video-server"]
CMD ["--conf", "/app/conf.toml", "serve"]
