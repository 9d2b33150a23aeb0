//! Journal throughput bench (placeholder until the real one lands).
fn main() {}
