//! Placeholder: every SQL example in docs/ run against a live cluster (issue 30), written next.
fn main() {}
