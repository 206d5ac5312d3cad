//! Verification of minisign signatures (Ed25519): the only signature operation the runtime has.
//!
//! Accepts what Debian's `minisign` writes and what `capsem-builder sign` writes: prehashed
//! (`ED`, BLAKE2b-512 of the file signed) and legacy (`Ed`, the file itself signed) signatures,
//! each with its trusted comment covered by the global signature. The cryptography is
//! `minisign-verify`'s; this module parses both texts strictly first, so that a signature made by
//! another key is reported as such, with both key ids, rather than as a bad signature.
//!
//! Key ids print as minisign prints them: 16 uppercase hex digits of the little-endian number.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

/// The largest signature file read (a minisign signature is four short lines).
pub const MAX_SIGNATURE_BYTES: u64 = 64 * 1024;
/// The largest public key file read.
pub const MAX_PUBLIC_KEY_BYTES: u64 = 64 * 1024;

const UNTRUSTED_PREFIX: &str = "untrusted comment:";
const TRUSTED_PREFIX: &str = "trusted comment: ";

/// A minisign key id: the 8 bytes that tie a signature to the key that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

impl Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why a key or a signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// A key or signature file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The public key text is not a minisign public key.
    #[error("not a minisign public key: {0}")]
    PublicKey(String),
    /// The signature text is not a minisign signature.
    #[error("not a minisign signature: {0}")]
    Malformed(String),
    /// A signature algorithm other than `Ed`/`ED`.
    #[error("unsupported signature algorithm {0:?} (minisign signatures are `Ed` or `ED`)")]
    UnsupportedAlgorithm(String),
    /// The signature was made by another key than the trusted one.
    #[error(
        "the signature was made by key {signature}, but the trusted public key is {public_key}: \
         signed with another key, or verified with the wrong public key"
    )]
    KeyMismatch {
        /// Key id inside the signature.
        signature: KeyId,
        /// Key id of the trusted public key.
        public_key: KeyId,
    },
    /// The key ids match but the Ed25519 check failed.
    #[error(
        "signature by key {key_id} does not verify: the signed file, the signature or its trusted \
         comment was modified"
    )]
    Invalid {
        /// The (matching) key id.
        key_id: KeyId,
    },
}

fn read_limited(path: &Path, limit: u64) -> Result<String, SignatureError> {
    let err = |source| SignatureError::Read { path: path.to_path_buf(), source };
    // A pipe or device would block or never end: only regular files are read.
    if !std::fs::metadata(path).map_err(err)?.is_file() {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let file = File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() as u64 > limit {
        return Err(err(io::Error::new(io::ErrorKind::InvalidData, format!("larger than {limit} bytes"))));
    }
    String::from_utf8(bytes).map_err(|_| err(io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text")))
}

/// A trusted minisign public key.
#[derive(Clone)]
pub struct PublicKey {
    key_id: KeyId,
    base64: String,
    inner: minisign_verify::PublicKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey").field("key_id", &self.key_id.to_string()).field("base64", &self.base64).finish()
    }
}

impl PublicKey {
    /// Parses a public key: the text of a `minisign.pub` file (`untrusted comment: …` line, then
    /// the base64 line) or the base64 line alone (as `minisign -P` takes it).
    pub fn parse(text: &str) -> Result<PublicKey, SignatureError> {
        let bad = |m: &str| SignatureError::PublicKey(m.to_owned());
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let b64 = match lines.as_slice() {
            [one] if !one.starts_with(UNTRUSTED_PREFIX) => *one,
            [comment, key] if comment.starts_with(UNTRUSTED_PREFIX) => *key,
            [comment] if comment.starts_with(UNTRUSTED_PREFIX) => return Err(bad("the base64 key line is missing")),
            [] => return Err(bad("empty")),
            _ => return Err(bad("expected an `untrusted comment:` line and a base64 line, or the base64 line alone")),
        };
        let raw = STANDARD.decode(b64).map_err(|e| SignatureError::PublicKey(format!("invalid base64: {e}")))?;
        if raw.len() != 42 {
            return Err(SignatureError::PublicKey(format!("{} bytes decoded, expected 42", raw.len())));
        }
        if &raw[..2] != b"Ed" {
            return Err(SignatureError::UnsupportedAlgorithm(String::from_utf8_lossy(&raw[..2]).into_owned()));
        }
        let inner = minisign_verify::PublicKey::from_base64(b64)
            .map_err(|e| SignatureError::PublicKey(format!("rejected by minisign-verify: {e}")))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&raw[2..10]);
        Ok(PublicKey { key_id: KeyId(id), base64: b64.to_owned(), inner })
    }

    /// Reads and parses a public key file.
    pub fn from_file(path: &Path) -> Result<PublicKey, SignatureError> {
        let text = read_limited(path, MAX_PUBLIC_KEY_BYTES)?;
        PublicKey::parse(&text).map_err(|e| match e {
            SignatureError::PublicKey(m) => SignatureError::PublicKey(format!("`{}`: {m}", path.display())),
            other => other,
        })
    }

    /// The key id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The base64 line (what `minisign -P` takes).
    pub fn to_base64(&self) -> &str {
        &self.base64
    }
}

/// What a valid signature vouched for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The key that made the signature (the trusted key).
    pub key_id: KeyId,
    /// `true` for `ED` (BLAKE2b-512 prehash) signatures, `false` for legacy `Ed`.
    pub prehashed: bool,
    /// The trusted comment, without its `trusted comment: ` prefix; covered by the signature.
    pub trusted_comment: String,
}

/// The fields of a signature text, parsed strictly.
struct Parsed {
    key_id: KeyId,
    prehashed: bool,
}

fn parse_signature(text: &str) -> Result<Parsed, SignatureError> {
    let bad = |m: &str| SignatureError::Malformed(m.to_owned());
    let mut lines = text.lines();
    let untrusted = lines.next().ok_or_else(|| bad("empty"))?;
    if !untrusted.starts_with(UNTRUSTED_PREFIX) {
        return Err(bad("the first line must start with `untrusted comment:`"));
    }
    let sig_line = lines.next().ok_or_else(|| bad("the signature line is missing"))?;
    let sig = STANDARD
        .decode(sig_line.trim_end())
        .map_err(|e| SignatureError::Malformed(format!("line 2 is not base64: {e}")))?;
    if sig.len() != 74 {
        return Err(SignatureError::Malformed(format!("line 2 decodes to {} bytes, expected 74", sig.len())));
    }
    let prehashed = match &sig[..2] {
        b"ED" => true,
        b"Ed" => false,
        other => return Err(SignatureError::UnsupportedAlgorithm(String::from_utf8_lossy(other).into_owned())),
    };
    let trusted = lines.next().ok_or_else(|| bad("the trusted comment line is missing"))?;
    if !trusted.starts_with(TRUSTED_PREFIX) {
        return Err(bad("the third line must start with `trusted comment: `"));
    }
    let global_line = lines.next().ok_or_else(|| bad("the global signature line is missing"))?;
    let global = STANDARD
        .decode(global_line.trim_end())
        .map_err(|e| SignatureError::Malformed(format!("line 4 is not base64: {e}")))?;
    if global.len() != 64 {
        return Err(SignatureError::Malformed(format!("line 4 decodes to {} bytes, expected 64", global.len())));
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("unexpected text after the fourth line"));
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&sig[2..10]);
    Ok(Parsed { key_id: KeyId(id), prehashed })
}

/// Verifies `signature` (the text of a `.minisig` file) over `data` with the trusted `key`:
/// the key ids must match, the Ed25519 signature must cover the data (its BLAKE2b-512 for `ED`)
/// and the global signature must cover the signature and the trusted comment.
pub fn verify(data: &[u8], signature: &str, key: &PublicKey) -> Result<Verified, SignatureError> {
    let parsed = parse_signature(signature)?;
    if parsed.key_id != key.key_id {
        return Err(SignatureError::KeyMismatch { signature: parsed.key_id, public_key: key.key_id });
    }
    let sig = minisign_verify::Signature::decode(signature)
        .map_err(|e| SignatureError::Malformed(format!("rejected by minisign-verify: {e}")))?;
    match key.inner.verify(data, &sig, true) {
        Ok(()) => Ok(Verified {
            key_id: parsed.key_id,
            prehashed: parsed.prehashed,
            trusted_comment: sig.trusted_comment().to_owned(),
        }),
        Err(minisign_verify::Error::UnexpectedKeyId) => {
            Err(SignatureError::KeyMismatch { signature: parsed.key_id, public_key: key.key_id })
        }
        Err(_) => Err(SignatureError::Invalid { key_id: parsed.key_id }),
    }
}

/// Reads a signature file (bounded size) for [`verify`].
pub fn read_signature(path: &Path) -> Result<String, SignatureError> {
    read_limited(path, MAX_SIGNATURE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Debian's minisign 0.11: `minisign -G -W -p k.pub -s k.key`, then
    // `minisign -S -s k.key -m f` (prehashed) and `minisign -S -l -s k.key -m f -x f.legacy`
    // over the file `hello\n`.
    const PUB: &str = "untrusted comment: minisign public key 37E7C5F59B04E874\n\
                       RWR06ASb9cXnN12ISF/SfRsjBgKGN9XFQs8JiczkJtv6F9HUU4IOrsxj\n";
    const DATA: &[u8] = b"hello\n";
    const SIG_ED: &str = "untrusted comment: signature from minisign secret key\n\
        RUR06ASb9cXnN7QBTokNvjsuCJ+SnoRt5M6pmDAxK1krIbkNfCcVy0EQcPF0Zha9POGAozSLtuSukNIkt7KYmsjKqKtqsKkNFwc=\n\
        trusted comment: timestamp:1795381839\tfile:f\thashed\n\
        v9Eq8txhqdZy49KgoEw9eu5b3SwLGIWh3E4G6xG6hBGBZUf+YJzh6sAnroXQAJ1FsfGmHF4m492rt/m7fpx8Bg==\n";
    const SIG_LEGACY: &str = "untrusted comment: signature from minisign secret key\n\
        RWR06ASb9cXnN84rwBsDisdxVpDu52aQUj6dCaKBxiezXKhgKn8KkWm+OSpmC5K9V6etAEzTusbfi9DbYiTSXoXCh2vshXh1ggI=\n\
        trusted comment: timestamp:1795381839\tfile:f\n\
        FSIQfcRJi7UlBROAcZatfwQuh123dnnO7lX3Xd0HEZqIhmWJLUT9YOka+ssPm3DN+z78y5Rk9+I+SxOeYxMwDA==\n";

    fn key() -> PublicKey {
        PublicKey::parse(PUB).unwrap()
    }

    #[test]
    fn key_id_prints_like_minisign() {
        assert_eq!(key().key_id().to_string(), "37E7C5F59B04E874");
        let bare = PublicKey::parse("RWR06ASb9cXnN12ISF/SfRsjBgKGN9XFQs8JiczkJtv6F9HUU4IOrsxj").unwrap();
        assert_eq!(bare.key_id(), key().key_id());
    }

    #[test]
    fn accepts_prehashed_and_legacy_signatures() {
        let v = verify(DATA, SIG_ED, &key()).unwrap();
        assert!(v.prehashed);
        assert_eq!(v.trusted_comment, "timestamp:1795381839\tfile:f\thashed");
        let v = verify(DATA, SIG_LEGACY, &key()).unwrap();
        assert!(!v.prehashed);
    }

    #[test]
    fn rejects_modified_data_signature_and_trusted_comment() {
        assert!(matches!(verify(b"hellO\n", SIG_ED, &key()), Err(SignatureError::Invalid { .. })));
        assert!(matches!(verify(b"hellO\n", SIG_LEGACY, &key()), Err(SignatureError::Invalid { .. })));
        let comment = SIG_ED.replace("file:f", "file:g");
        let e = verify(DATA, &comment, &key()).unwrap_err();
        assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
        // A changed byte in the Ed25519 signature (not the key id): base64 char 20 of line 2.
        let mut lines: Vec<String> = SIG_ED.lines().map(str::to_owned).collect();
        let mut b: Vec<u8> = lines[1].clone().into_bytes();
        b[20] = if b[20] == b'A' { b'B' } else { b'A' };
        lines[1] = String::from_utf8(b).unwrap();
        let e = verify(DATA, &lines.join("\n"), &key()).unwrap_err();
        assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
    }

    #[test]
    fn another_key_is_named_with_both_ids() {
        // Same key material, another key id: the signature's id no longer matches.
        let mut raw = STANDARD.decode("RWR06ASb9cXnN12ISF/SfRsjBgKGN9XFQs8JiczkJtv6F9HUU4IOrsxj").unwrap();
        raw[2] ^= 0xff;
        let other = PublicKey::parse(&STANDARD.encode(&raw)).unwrap();
        let e = verify(DATA, SIG_ED, &other).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SignatureError::KeyMismatch { .. }));
        assert!(text.contains("37E7C5F59B04E874") && text.contains(&other.key_id().to_string()), "{text}");
    }

    #[test]
    fn malformed_inputs_are_clear_errors() {
        for bad in ["", "untrusted comment: x\n", "untrusted comment: x\n!!!\n", "nope\nRUR0\n"] {
            assert!(matches!(verify(DATA, bad, &key()), Err(SignatureError::Malformed(_))), "{bad:?}");
        }
        let no_trusted = SIG_ED.replace("trusted comment: ", "comment: ");
        assert!(matches!(verify(DATA, &no_trusted, &key()), Err(SignatureError::Malformed(_))));
        let extra = format!("{SIG_ED}junk\n");
        assert!(matches!(verify(DATA, &extra, &key()), Err(SignatureError::Malformed(_))));
        for bad in ["", "untrusted comment: x", "a\nb\nc", "RWR06ASb9cXnN12I", "trusted comment: x\nRWR0"] {
            assert!(matches!(PublicKey::parse(bad), Err(SignatureError::PublicKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn unknown_algorithms_are_refused() {
        let mut raw = STANDARD.decode(SIG_ED.lines().nth(1).unwrap()).unwrap();
        raw[..2].copy_from_slice(b"XX");
        let sig = SIG_ED.replace(SIG_ED.lines().nth(1).unwrap(), &STANDARD.encode(&raw));
        assert!(matches!(verify(DATA, &sig, &key()), Err(SignatureError::UnsupportedAlgorithm(_))));
    }

    #[test]
    fn files_are_read_with_their_path_in_errors() {
        let e = PublicKey::from_file(Path::new("/nonexistent/k.pub")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/k.pub"), "{e}");
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("k.pub");
        std::fs::write(&p, "garbage").unwrap();
        let e = PublicKey::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("k.pub"), "{e}");
        std::fs::write(&p, PUB).unwrap();
        assert_eq!(PublicKey::from_file(&p).unwrap().key_id(), key().key_id());
    }
}
