//! The capsem runtime: boots verified images in micro-VMs and runs commands in them.
//!
//! - [`config`]: `~/.capsem/user.toml` and `/etc/capsem/corp.toml`, layered over the image's
//!   `defaults.json` (corp > user > image).
//! - [`vm`]: the hypervisor trait and its backends (qemu, kvm, vz).
//! - [`session`]: a VM's private run directory and its cleanup, also after signals.
//! - [`shell`]: the interactive PTY of `capsem shell`.
//! - [`boot`]: verify → resolve settings → start the VM → connect the agent.

pub mod boot;
pub mod config;
pub mod egress;
pub mod session;
pub mod sessionlog;
pub mod shell;
pub mod vm;
