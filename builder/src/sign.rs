//! Release signing: minisign key generation and deterministic minisign signatures.
//!
//! Keys are minisign's own files, so `minisign -S` and `minisign -V` use ours and we use theirs:
//! the secret key file is read and written with the `minisign` crate (unencrypted keys as
//! `minisign -G -W` makes them, and scrypt password-protected keys, whose password comes from
//! [`PASSWORD_ENV`]); the public key is the usual two-line `minisign.pub`.
//!
//! Signatures are prehashed (`ED`: Ed25519 over the BLAKE2b-512 of the file) like
//! `minisign -S`'s, but deterministic: RFC 8032 Ed25519 without added noise (the `minisign` crate
//! always adds random noise, so the two signatures are computed here with `ed25519-compact`),
//! fixed comments and no timestamp. The same key and the same bytes give a byte-identical
//! `.minisig`. Every signature is verified with `capsem-trust` before it is written.
//!
//! Files are written atomically (temporary file in the same directory, fsync, rename); the
//! secret key is created with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use capsem_trust::signature::{self, KeyId, PublicKey, SignatureError};

/// Environment variable holding the password of a password-protected secret key.
pub const PASSWORD_ENV: &str = "CAPSEM_SIGNING_KEY_PASSWORD";
/// Environment variable naming the secret key file for `capsem-builder sign`.
pub const SECRET_KEY_ENV: &str = "CAPSEM_SIGNING_KEY";
/// Suffix of signature files.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// Length of a decoded minisign secret key: algorithms (2+2+2), scrypt salt (32), limits (8+8),
/// key id (8), Ed25519 secret key (64), checksum (32).
const SECRET_KEY_BYTES: usize = 158;

/// Why generating a key or signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `keygen` without `force` found an existing file.
    #[error("`{path}` already exists; pass --force to overwrite it")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// `keygen` was given the same path for both keys.
    #[error("the public and the secret key must be different files (both are `{path}`)")]
    SamePath {
        /// The path given twice.
        path: PathBuf,
    },
    /// The secret key file is not a usable minisign secret key.
    #[error("`{path}` is not a usable minisign secret key: {reason}")]
    SecretKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A password-protected key and no password.
    #[error("`{path}` is password-protected; set {PASSWORD_ENV} to its password")]
    NeedsPassword {
        /// The key file.
        path: PathBuf,
    },
    /// The password does not decrypt the key.
    #[error("wrong password for `{path}` (from {PASSWORD_ENV})")]
    WrongPassword {
        /// The key file.
        path: PathBuf,
    },
    /// The file to sign has a name that cannot go into the trusted comment.
    #[error("cannot sign `{path}`: its file name must be UTF-8 without control characters")]
    FileName {
        /// The file.
        path: PathBuf,
    },
    /// Key generation failed inside the `minisign` crate.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The signature just made does not verify: a bug, never written out.
    #[error("the signature of `{path}` does not verify with its own key: {source}")]
    SelfCheck {
        /// The signed file.
        path: PathBuf,
        /// The verification error.
        #[source]
        source: SignatureError,
    },
}

/// The password from [`PASSWORD_ENV`]; unset and empty both mean none.
pub fn password_from_env() -> Option<String> {
    std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty())
}

/// A decrypted minisign secret key, ready to sign. Its `Debug` shows only the key id.
pub struct SigningKey {
    key_id: KeyId,
    keypair: ed25519_compact::KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id.to_string()).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a minisign secret key file. `password` is needed only for a protected key.
    pub fn load(path: &Path, password: Option<&str>) -> Result<SigningKey, SignError> {
        let text = fs::read_to_string(path).map_err(|source| SignError::Read { path: path.to_path_buf(), source })?;
        SigningKey::parse(&text, password, path)
    }

    /// Parses the text of a minisign secret key file; `path` only names it in errors.
    pub fn parse(text: &str, password: Option<&str>, path: &Path) -> Result<SigningKey, SignError> {
        let bad = |reason: &str| SignError::SecretKey { path: path.to_path_buf(), reason: reason.to_owned() };
        let mut lines = text.lines();
        if !lines.next().is_some_and(|l| l.starts_with("untrusted comment:")) {
            return Err(bad("the first line must start with `untrusted comment:`"));
        }
        let b64 = lines.next().map(str::trim).ok_or_else(|| bad("the base64 key line is missing"))?;
        let raw = STANDARD.decode(b64).map_err(|_| bad("the key line is not base64"))?;
        if raw.len() != SECRET_KEY_BYTES {
            return Err(bad(&format!("{} bytes decoded, expected {SECRET_KEY_BYTES}", raw.len())));
        }
        if &raw[0..2] != b"Ed" {
            return Err(bad("not an Ed25519 (`Ed`) key"));
        }
        if &raw[4..6] != b"B2" {
            return Err(bad("unknown checksum algorithm"));
        }
        let plain = match &raw[2..4] {
            [0, 0] => {
                let expected = checksum(&raw[0..2], &raw[54..62], &raw[62..126]);
                let chk = &raw[126..158];
                // `minisign -G -W` leaves the checksum of an unencrypted key zeroed.
                if chk != expected.as_slice() && chk.iter().any(|&b| b != 0) {
                    return Err(bad("checksum mismatch (corrupted key)"));
                }
                raw
            }
            b"Sc" => {
                let Some(password) = password else {
                    return Err(SignError::NeedsPassword { path: path.to_path_buf() });
                };
                let boxed = minisign::SecretKeyBox::from_string(text).map_err(|e| bad(&e.to_string()))?;
                // `from_box` prompts on the terminal when given no password; it always gets one.
                match minisign::SecretKey::from_box(boxed, Some(password.to_owned())) {
                    Ok(sk) => sk.to_bytes(),
                    Err(e) if matches!(e.kind(), minisign::ErrorKind::Verify) => {
                        return Err(SignError::WrongPassword { path: path.to_path_buf() });
                    }
                    Err(e) => return Err(bad(&e.to_string())),
                }
            }
            _ => return Err(bad("unknown key derivation algorithm")),
        };
        if plain.len() != SECRET_KEY_BYTES {
            return Err(bad("unexpected decrypted key length"));
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&plain[54..62]);
        let seed = ed25519_compact::Seed::from_slice(&plain[62..94]).map_err(|_| bad("invalid Ed25519 seed"))?;
        let keypair = ed25519_compact::KeyPair::try_from_seed(seed).map_err(|_| bad("invalid Ed25519 seed"))?;
        if keypair.pk.as_ref() != &plain[94..126] {
            return Err(bad("its public half does not match its seed (corrupted key)"));
        }
        Ok(SigningKey { key_id: KeyId(id), keypair })
    }

    /// The key id (as minisign prints it).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The public key's base64 line (`minisign -P` form).
    pub fn public_key_base64(&self) -> String {
        let mut raw = Vec::with_capacity(42);
        raw.extend_from_slice(b"Ed");
        raw.extend_from_slice(&self.key_id.0);
        raw.extend_from_slice(self.keypair.pk.as_ref());
        STANDARD.encode(raw)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::parse(&self.public_key_base64()).expect("a derived public key always parses")
    }

    /// The text of a `.minisig` for `data` (a file named `file_name`): deterministic, prehashed.
    /// The trusted comment is `capsem manifest <file_name> b3:<BLAKE3 of data>`.
    pub fn sign(&self, data: &[u8], file_name: &str) -> String {
        let prehash = blake2b_simd::Params::new().hash_length(64).hash(data);
        let sig = self.keypair.sk.sign(prehash.as_bytes(), None);
        let trusted = format!("capsem manifest {file_name} b3:{}", blake3::hash(data).to_hex());
        let mut global_input = sig.to_vec();
        global_input.extend_from_slice(trusted.as_bytes());
        let global = self.keypair.sk.sign(&global_input, None);
        let mut line = Vec::with_capacity(74);
        line.extend_from_slice(b"ED");
        line.extend_from_slice(&self.key_id.0);
        line.extend_from_slice(sig.as_ref());
        format!(
            "untrusted comment: capsem signature, key {}\n{}\ntrusted comment: {trusted}\n{}\n",
            self.key_id,
            STANDARD.encode(line),
            STANDARD.encode(global.as_ref())
        )
    }
}

/// BLAKE2b-256 over algorithm, key id and secret key: minisign's secret key checksum.
fn checksum(sig_alg: &[u8], key_id: &[u8], sk: &[u8]) -> Vec<u8> {
    let mut state = blake2b_simd::Params::new().hash_length(32).to_state();
    state.update(sig_alg).update(key_id).update(sk);
    state.finalize().as_bytes().to_vec()
}

/// The signature path of `file`: `<file>.minisig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

/// Signs `manifest` with the secret key at `secret_key` (password, if the key has one, from
/// [`PASSWORD_ENV`]) and writes `<manifest>.minisig` atomically. Returns the signature's path.
pub fn sign_file(manifest: &Path, secret_key: &Path) -> Result<PathBuf, SignError> {
    let key = SigningKey::load(secret_key, password_from_env().as_deref())?;
    sign_file_with(manifest, &key)
}

/// [`sign_file`] with an already loaded key.
pub fn sign_file_with(manifest: &Path, key: &SigningKey) -> Result<PathBuf, SignError> {
    let name = manifest
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.chars().any(char::is_control))
        .ok_or_else(|| SignError::FileName { path: manifest.to_path_buf() })?;
    let data = fs::read(manifest).map_err(|source| SignError::Read { path: manifest.to_path_buf(), source })?;
    let text = key.sign(&data, name);
    signature::verify(&data, &text, &key.public_key())
        .map_err(|source| SignError::SelfCheck { path: manifest.to_path_buf(), source })?;
    let out = signature_path(manifest);
    write_atomic(&out, text.as_bytes(), 0o644, true)?;
    Ok(out)
}

/// A freshly generated key pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedKey {
    /// The key id.
    pub key_id: KeyId,
    /// The public key's base64 line.
    pub public_key: String,
    /// Whether the secret key is password-protected.
    pub encrypted: bool,
}

/// Generates a key pair: password-protected when [`PASSWORD_ENV`] is set, else unencrypted (as
/// `minisign -G -W`, for CI). See [`keygen_with`].
pub fn keygen(public_key: &Path, secret_key: &Path, force: bool) -> Result<GeneratedKey, SignError> {
    keygen_with(public_key, secret_key, force, password_from_env().as_deref())
}

/// Generates a key pair and writes both files atomically, the secret key with mode 0600.
/// Without `force`, an existing file at either path is an error and nothing is written.
pub fn keygen_with(
    public_key: &Path,
    secret_key: &Path,
    force: bool,
    password: Option<&str>,
) -> Result<GeneratedKey, SignError> {
    if public_key == secret_key {
        return Err(SignError::SamePath { path: public_key.to_path_buf() });
    }
    if !force {
        for p in [secret_key, public_key] {
            if fs::symlink_metadata(p).is_ok() {
                return Err(SignError::Exists { path: p.to_path_buf() });
            }
        }
    }
    let generated = match password {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw.to_owned())),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(|e| SignError::Generate(e.to_string()))?;
    let comment =
        if password.is_some() { "capsem secret key (password-protected)" } else { "capsem secret key (unencrypted)" };
    let sk_text = generated.sk.to_box(Some(comment)).map_err(|e| SignError::Generate(e.to_string()))?.to_string();
    // Read back what is about to be written: the file must load and match the public key.
    let key = SigningKey::parse(&sk_text, password, secret_key)?;
    let pk_line = key.public_key_base64();
    let pk_text = format!("untrusted comment: minisign public key {}\n{pk_line}\n", key.key_id());
    write_atomic(secret_key, sk_text.as_bytes(), 0o600, force)?;
    write_atomic(public_key, pk_text.as_bytes(), 0o644, force)?;
    Ok(GeneratedKey { key_id: key.key_id(), public_key: pk_line, encrypted: password.is_some() })
}

/// Writes `bytes` atomically with `mode`: over an existing file when `overwrite`, else failing
/// with [`SignError::Exists`] if `path` exists (also if it appears meanwhile).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), SignError> {
    use capsem_trust::atomic;
    let replace = if overwrite { atomic::Replace::Always } else { atomic::Replace::Never };
    atomic::write_with(path, mode, replace, |f| f.write_all(bytes)).map_err(|source| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            SignError::Exists { path: path.to_path_buf() }
        } else {
            SignError::Write { path: path.to_path_buf(), source }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_in(dir: &Path) -> (PathBuf, PathBuf) {
        let (p, s) = (dir.join("k.pub"), dir.join("k.key"));
        keygen_with(&p, &s, false, None).unwrap();
        (p, s)
    }

    #[test]
    fn keygen_writes_loadable_keys_with_private_mode() {
        let t = tempfile::tempdir().unwrap();
        let (p, s) = (t.path().join("k.pub"), t.path().join("k.key"));
        let g = keygen_with(&p, &s, false, None).unwrap();
        assert!(!g.encrypted);
        assert_eq!(fs::metadata(&s).unwrap().permissions().mode() & 0o777, 0o600);
        let pk = PublicKey::from_file(&p).unwrap();
        assert_eq!(pk.key_id(), g.key_id);
        assert_eq!(pk.to_base64(), g.public_key);
        let sk = SigningKey::load(&s, None).unwrap();
        assert_eq!(sk.key_id(), g.key_id);
        assert_eq!(format!("{sk:?}"), format!("SigningKey {{ key_id: \"{}\", .. }}", g.key_id));
    }

    #[test]
    fn keygen_refuses_to_overwrite_without_force() {
        let t = tempfile::tempdir().unwrap();
        let (p, s) = key_in(t.path());
        let before = fs::read(&s).unwrap();
        let e = keygen_with(&p, &s, false, None).unwrap_err();
        assert!(matches!(e, SignError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("--force"));
        assert_eq!(fs::read(&s).unwrap(), before);
        let g = keygen_with(&p, &s, true, None).unwrap();
        assert_ne!(fs::read(&s).unwrap(), before);
        assert_eq!(SigningKey::load(&s, None).unwrap().key_id(), g.key_id);
        assert!(matches!(keygen_with(&s, &s, true, None), Err(SignError::SamePath { .. })));
        let leftovers: Vec<_> = fs::read_dir(t.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 2, "temporary files left: {leftovers:?}");
    }

    #[test]
    fn signing_is_deterministic_and_verifies() {
        let t = tempfile::tempdir().unwrap();
        let (p, s) = key_in(t.path());
        let m = t.path().join("manifest.json");
        fs::write(&m, b"{\"format\": 1}\n").unwrap();
        let sig = sign_file(&m, &s).unwrap();
        assert_eq!(sig, t.path().join("manifest.json.minisig"));
        let first = fs::read(&sig).unwrap();
        sign_file(&m, &s).unwrap();
        assert_eq!(fs::read(&sig).unwrap(), first);
        let text = String::from_utf8(first).unwrap();
        let v = signature::verify(&fs::read(&m).unwrap(), &text, &PublicKey::from_file(&p).unwrap()).unwrap();
        assert!(v.prehashed);
        let b3 = blake3::hash(b"{\"format\": 1}\n").to_hex();
        assert_eq!(v.trusted_comment, format!("capsem manifest manifest.json b3:{b3}"));
    }

    #[test]
    fn password_protected_keys_need_the_right_password() {
        let t = tempfile::tempdir().unwrap();
        let (p, s) = (t.path().join("k.pub"), t.path().join("k.key"));
        let g = keygen_with(&p, &s, false, Some("correct horse")).unwrap();
        assert!(g.encrypted);
        let e = SigningKey::load(&s, None).unwrap_err();
        assert!(matches!(e, SignError::NeedsPassword { .. }), "{e}");
        assert!(e.to_string().contains(PASSWORD_ENV));
        let e = SigningKey::load(&s, Some("wrong")).unwrap_err();
        assert!(matches!(e, SignError::WrongPassword { .. }), "{e}");
        let k = SigningKey::load(&s, Some("correct horse")).unwrap();
        assert_eq!(k.key_id(), g.key_id);
        assert_eq!(k.public_key_base64(), PublicKey::from_file(&p).unwrap().to_base64());
    }

    #[test]
    fn corrupted_secret_keys_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (_, s) = key_in(t.path());
        let text = fs::read_to_string(&s).unwrap();
        let line = text.lines().nth(1).unwrap();
        let mut raw = STANDARD.decode(line).unwrap();
        raw[100] ^= 1; // inside the public half of the secret key
        let bad = text.replace(line, &STANDARD.encode(&raw));
        let e = SigningKey::parse(&bad, None, &s).unwrap_err().to_string();
        assert!(e.contains("corrupted"), "{e}");
        for junk in ["", "untrusted comment: x\n", "untrusted comment: x\nQUJD\n", "RWQAAE\n"] {
            assert!(matches!(SigningKey::parse(junk, None, &s), Err(SignError::SecretKey { .. })), "{junk:?}");
        }
        let e = SigningKey::load(&t.path().join("absent.key"), None).unwrap_err().to_string();
        assert!(e.contains("absent.key"), "{e}");
    }
}
