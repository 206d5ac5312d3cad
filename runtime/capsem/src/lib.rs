//! The capsem runtime library: configuration, trust checks, hypervisor backends.

pub mod config;
