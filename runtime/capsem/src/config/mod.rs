//! Runtime configuration (skeleton).
