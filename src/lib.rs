//! video-server: cameras in, live video and a SQL-indexed archive out.
//!
//! # Layout
//!
//! | module | role |
//! |---|---|
//! | [`config`] | `conf.toml` / `conf.json` with the Go original's keys, plus ours |
//! | [`stream`] | the stream (camera) model shared by config, database and API |
//! | [`roots`] | where file sources may be read and archive segments written |
//! | [`redact`] | secrets in source URLs: masked for display, kept when sent back masked |
//! | [`db`] | SQLite / Postgres pool, migrations, the one repository API (only place with SQL) |
//! | [`media`] | codec parameters, frames, fMP4 writing, MP4 reading (no I/O policy, no HTTP/SQL) |
//! | [`source`] | RTSP (retina) and looping-file sources, the per-stream supervisor |
//! | [`hub`] | per-stream fan-out to viewers, HLS and recorder, with keyframe resync |
//! | [`manager`] | starts, stops and reports on running streams |
//! | [`cluster`] | scale-out: node registration, camera leases, change notifications |
//! | [`metrics`] | Prometheus metrics, read at scrape time from the subsystems' counters |
//! | [`auth`] | access control: tokens, scopes, signed URLs, the audit log's writer |
//! | [`api`] | the API listener: Go-compatible routes, `/api/v1`, OpenAPI, the route policy table |
//! | [`live`] | the video listener: MSE WebSocket, archive WebSocket, HLS files |
//! | [`archive`] | recording, segment storage (filesystem, S3), repair, retention, import, export |
//! | [`server`] | wiring, listeners, graceful shutdown |
//! | [`logging`] | tracing subscriber set-up (text or JSON) |
//! | [`web`] | the built-in web UI (`web/ui/`, embedded), served at `/` on both listeners |
//!
//! Dependencies point one way: `config`/`media` → `db`/`hub` → `source` → `manager` →
//! `cluster` → `auth` → `live`/`api` → `server`.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod hub;
pub mod limits;
pub mod live;
pub mod logging;
pub mod manager;
pub mod media;
pub mod metrics;
pub mod redact;
pub mod roots;
pub mod server;
pub mod source;
pub mod stream;
pub mod web;
pub mod webrtc;
