//! Integration tests, one binary (faster to link than one per file). Database tests run on both
//! SQLite and Postgres through `both_engines!`.

#[path = "../support/mod.rs"]
mod support;

mod archive;
mod auth;
mod binary_cli;
mod cluster;
mod codec_switch;
mod compose;
mod config_go;
mod db_reports;
mod db_streams;
mod db_uploads;
mod documented;
mod e2e;
mod export;
mod faults;
mod faults_io;
mod faults_leases;
mod faults_storage;
mod file_source;
mod go_routes;
mod import_archive;
mod leases;
mod limits;
mod live;
mod metrics;
mod openapi;
mod playback;
mod recorder;
mod retention;
mod s3;
mod security;
mod v1_archive;
mod v1_streams;
mod video_listener;
mod webrtc;
mod webui;
