//! Placeholder: the exporter's queries against a live cluster (issue 30), written next.
fn main() {}
