//! `capsem` (skeleton).
fn main() {}
