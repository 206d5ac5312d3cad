//! The capsem guest-agent protocol (skeleton; see guest/README.md).
