//! capsem-agent (skeleton).
fn main() {}
