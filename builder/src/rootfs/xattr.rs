//! Extended attributes found in a tar, which the squashfs image cannot carry.
//!
//! Owns recognising xattr PAX records (`SCHILY.xattr.<name>`, written by Go's archive/tar and so by
//! Docker and Podman; `LIBARCHIVE.xattr.<url-encoded name>` with a base64 value, written by bsdtar)
//! and decoding `security.capability` into the `getcap` notation, so the report can say exactly
//! which file capability each binary lost. It decides nothing: the caller drops them all.

use std::io;

/// One extended attribute of a tar entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Xattr {
    /// Attribute name, e.g. `security.capability`.
    pub name: String,
    /// Human-readable value where we know the format (file capabilities).
    pub value: Option<String>,
}

/// The xattrs among an entry's PAX records, sorted by name.
pub(crate) fn from_pax<'a>(records: impl Iterator<Item = io::Result<tar::PaxExtension<'a>>>) -> io::Result<Vec<Xattr>> {
    let mut out = Vec::new();
    for record in records {
        let record = record?;
        let key = String::from_utf8_lossy(record.key_bytes());
        let (name, raw) = if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
            (name.to_owned(), Some(record.value_bytes().to_vec()))
        } else if let Some(encoded) = key.strip_prefix("LIBARCHIVE.xattr.") {
            (percent_decode(encoded), base64_decode(record.value_bytes()))
        } else {
            continue;
        };
        let value = match (name.as_str(), raw) {
            ("security.capability", Some(raw)) => Some(describe_capability(&raw)),
            _ => None,
        };
        out.push(Xattr { name, value });
    }
    out.sort();
    Ok(out)
}

/// Linux capability names by bit number (include/uapi/linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// `vfs_cap_data` (v1, v2 or v3) in `getcap` notation: `cap_net_raw=ep`, `cap_a,cap_b+i`.
/// Anything unparseable is described as such rather than guessed.
pub(crate) fn describe_capability(raw: &[u8]) -> String {
    let word = |i: usize| raw.get(i * 4..i * 4 + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(magic) = word(0) else { return format!("unparsed ({} bytes)", raw.len()) };
    let effective = magic & 1 == 1;
    let (permitted, inheritable) = match (magic & 0xff00_0000, raw.len()) {
        (0x0100_0000, 12) => (u64::from(word(1).unwrap_or(0)), u64::from(word(2).unwrap_or(0))),
        (0x0200_0000, 20) | (0x0300_0000, 24) => {
            let lo_p = u64::from(word(1).unwrap_or(0));
            let lo_i = u64::from(word(2).unwrap_or(0));
            let hi_p = u64::from(word(3).unwrap_or(0));
            let hi_i = u64::from(word(4).unwrap_or(0));
            (lo_p | hi_p << 32, lo_i | hi_i << 32)
        }
        _ => return format!("unparsed (magic {magic:#010x}, {} bytes)", raw.len()),
    };
    let names = |set: u64| -> String {
        (0..64u32)
            .filter(|bit| set & (1u64 << bit) != 0)
            .map(|bit| CAP_NAMES.get(bit as usize).map_or_else(|| format!("cap_{bit}"), |n| (*n).to_owned()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut parts = Vec::new();
    if permitted != 0 {
        parts.push(format!("{}={}p", names(permitted), if effective { "e" } else { "" }));
    }
    if inheritable != 0 {
        parts.push(format!("{}+i", names(inheritable)));
    }
    if parts.is_empty() { "(empty capability set)".to_owned() } else { parts.join(" ") }
}

/// `%XX` decoding as libarchive writes xattr names; malformed escapes are kept verbatim.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard base64 (padding optional); `None` on any other character.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        }))
    };
    let s: Vec<u8> = s.iter().copied().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `setcap cap_net_raw=ep /usr/bin/ping` as stored by the kernel (v2, 20 bytes).
    pub(crate) const PING_CAP_V2: [u8; 20] = [0x01, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    #[test]
    fn decodes_v2_v3_and_v1_capabilities() {
        assert_eq!(describe_capability(&PING_CAP_V2), "cap_net_raw=ep");
        // v3 (with rootid), permitted net_bind_service + sys_admin, not effective, inheritable chown.
        let mut v3 = vec![0x00, 0, 0, 0x03];
        v3.extend_from_slice(&((1u32 << 10) | (1 << 21)).to_le_bytes());
        v3.extend_from_slice(&1u32.to_le_bytes());
        v3.extend_from_slice(&0u32.to_le_bytes());
        v3.extend_from_slice(&0u32.to_le_bytes());
        v3.extend_from_slice(&0u32.to_le_bytes()); // rootid
        assert_eq!(describe_capability(&v3), "cap_net_bind_service,cap_sys_admin=p cap_chown+i");
        // v2, bit 40 (checkpoint_restore) lives in the high word.
        let mut hi = vec![0x00, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
        hi.extend_from_slice(&(1u32 << 8).to_le_bytes());
        hi.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(describe_capability(&hi), "cap_checkpoint_restore=p");
        let v1 = [0x01, 0, 0, 0x01, 0x00, 0x20, 0, 0, 0, 0, 0, 0];
        assert_eq!(describe_capability(&v1), "cap_net_raw=ep");
        assert_eq!(describe_capability(&[1, 2, 3]), "unparsed (3 bytes)");
        assert_eq!(describe_capability(&[0, 0, 0, 9, 0]), "unparsed (magic 0x09000000, 5 bytes)");
    }

    #[test]
    fn decodes_libarchive_encodings() {
        assert_eq!(percent_decode("user.a%20b%3D"), "user.a b=");
        assert_eq!(percent_decode("bad%zz%4"), "bad%zz%4");
        assert_eq!(base64_decode(b"AQAAAgAgAAAAAAAAAAAAAAAAAAA="), Some(PING_CAP_V2.to_vec()));
        assert_eq!(base64_decode(b"aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64_decode(b"a*"), None);
    }
}
