//! Telemetry ingest bench (placeholder while it is written).
fn main() {}
