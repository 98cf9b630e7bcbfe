//! Integration tests, one binary (faster to link than one per file). Database tests run on both
//! SQLite and Postgres through `both_engines!`.

#[path = "../support/mod.rs"]
mod support;

mod binary_cli;
mod compose;
mod config_go;
mod db_reports;
mod db_streams;
mod e2e;
mod go_routes;
mod live;
mod openapi;
mod v1_archive;
mod v1_streams;
mod video_listener;
