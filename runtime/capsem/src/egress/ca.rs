//! The per-installation egress CA and the leaf certificates the proxy presents to the guest.
//!
//! [`CertAuthority::load_or_create`] keeps an ECDSA P-256 CA in a directory: `ca.pem` (0644, the
//! certificate the guest trusts) and `ca-key.pem` (0600, created with that mode and linked into
//! place atomically; a key file readable by group or others is refused). The CA's common name is
//! `capsem egress CA <id>`, where `<id>` is derived from its (random) public key, so the
//! certificate can be rebuilt from the key alone and leaves always name the right issuer.
//!
//! [`CertAuthority::leaf_for`] mints a leaf per SNI (SAN = that DNS name, EKU serverAuth, valid
//! 90 days from one hour ago) and caches it in a bounded map.
//!
//! Never: write the key with a wider mode than 0600 (not even for an instant), load a key others
//! can read, or mint a leaf for anything that is not a DNS name.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

/// File name of the CA certificate (PEM) inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key (PKCS#8 PEM, mode 0600) inside the CA directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf is valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How far back validity starts (clock skew between host and guest).
const BACKDATE: Duration = Duration::from_secs(3600);
/// A cached leaf older than this is minted again (well before it expires).
const LEAF_REFRESH: Duration = Duration::from_secs(30 * 24 * 3600);
/// At most this many leaves are cached; the oldest goes first.
const LEAF_CACHE_CAPACITY: usize = 1024;

/// Why the CA could not be loaded or created, or a leaf not minted.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:04o}); the CA key must be private: \
         run `chmod 600 {path}`",
        path = path.display()
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path}: {reason}", path = path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{cert} does not belong to {key} ({reason}); remove {cert} to rebuild it from the key",
        cert = cert.display(),
        key = key.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
    #[error("cannot mint a certificate for {host:?}: {reason}")]
    Leaf { host: String, reason: String },
    #[error("generating the CA: {0}")]
    Generate(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_owned(), source }
}

/// The per-installation CA: signs one leaf per SNI the guest asks for.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    provider: Arc<CryptoProvider>,
    leaves: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").field("ca_pem", &self.ca_pem).finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// Loads the CA from `dir` (`ca.pem` + `ca-key.pem`), creating the directory, the key and
    /// the certificate when missing. A missing `ca.pem` is rebuilt from an existing key; a key
    /// file readable by group or others is refused.
    pub fn load_or_create(dir: &Path) -> Result<CertAuthority, CaError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        let key = match read_private(&key_path) {
            Ok(pem) => {
                let key = KeyPair::from_pem(&pem)
                    .map_err(|e| CaError::Invalid { path: key_path.clone(), reason: format!("not a PEM key: {e}") })?;
                if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
                    return Err(CaError::Invalid { path: key_path, reason: "not an ECDSA P-256 key".to_owned() });
                }
                key
            }
            Err(CaError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
                let key =
                    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Generate(e.to_string()))?;
                if !write_exclusive(&key_path, key.serialize_pem().as_bytes(), 0o600)? {
                    // Another process created it first: use theirs.
                    return Self::load_or_create(dir);
                }
                key
            }
            Err(e) => return Err(e),
        };
        let params = ca_params(&key);
        let ca_pem = match fs::read_to_string(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let cert = params.self_signed(&key).map_err(|e| CaError::Generate(e.to_string()))?;
                if !write_exclusive(&cert_path, cert.pem().as_bytes(), 0o644)? {
                    return Self::load_or_create(dir);
                }
                cert.pem()
            }
            Err(e) => return Err(io_err(&cert_path)(e)),
        };
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| CaError::Invalid { path: cert_path.clone(), reason: format!("not a PEM certificate: {e}") })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mismatch = |reason: String| CaError::Mismatch { cert: cert_path.clone(), key: key_path.clone(), reason };
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(vec![ca_der.clone()], key_der, &provider).map_err(|e| mismatch(e.to_string()))?;
        let ca = CertAuthority {
            issuer: Issuer::new(params, key),
            ca_der,
            ca_pem,
            provider,
            leaves: Mutex::new(HashMap::new()),
        };
        // Self-check: a probe leaf must chain to the stored certificate (same subject, key,
        // still valid, CA constraints), or every leaf would be rejected by the guest.
        let probe = ca.mint("capsem-ca-self-check.invalid")?;
        verify_leaf(&ca.ca_der, &probe.cert, "capsem-ca-self-check.invalid").map_err(mismatch)?;
        Ok(ca)
    }

    /// The CA certificate (PEM), as installed in the guest's trust store.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate (DER).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// A leaf for `host` (a DNS name, as sent in SNI), chained to this CA; cached.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some((leaf, minted)) = self.lock_leaves().get(&host)
            && minted.elapsed() < LEAF_REFRESH
        {
            return Ok(leaf.clone());
        }
        let leaf = self.mint(&host)?;
        let mut leaves = self.lock_leaves();
        if leaves.len() >= LEAF_CACHE_CAPACITY && !leaves.contains_key(&host) {
            let oldest = leaves.iter().min_by_key(|(_, (_, t))| *t).map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                leaves.remove(&oldest);
            }
        }
        leaves.insert(host, (leaf.clone(), Instant::now()));
        Ok(leaf)
    }

    fn lock_leaves(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<CertifiedKey>, Instant)>> {
        // The map holds no invariant a panicking holder could break.
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mint(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let leaf_err = |reason: String| CaError::Leaf { host: host.to_owned(), reason };
        let name = DnsName::try_from(host).map_err(|_| leaf_err("not a DNS name".to_owned()))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| leaf_err(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::DnsName(
            name.as_ref().to_owned().try_into().map_err(|e: rcgen::Error| leaf_err(e.to_string()))?,
        )];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        let start = SystemTime::now() - BACKDATE;
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(start);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(start + LEAF_VALIDITY);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| leaf_err(e.to_string()))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = self.provider.key_provider.load_private_key(key_der).map_err(|e| leaf_err(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.ca_der.clone()], signer)))
    }
}

/// The CA's parameters, a function of its key alone (so `ca.pem` can be rebuilt and always
/// names the subject that leaves name as their issuer).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id: String = params.key_identifier(key).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("capsem egress CA {id}"));
    dn.push(DnType::OrganizationName, "capsem");
    params.distinguished_name = dn;
    let start = SystemTime::now() - BACKDATE;
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(start);
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + since_epoch(start + CA_VALIDITY);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Seconds since the Unix epoch, added to `rcgen::date_time_ymd(1970, 1, 1)` to get rcgen's
/// date type without depending on the `time` crate.
fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Reads a private key file, refusing one that group or others can read.
fn read_private(path: &Path) -> Result<String, CaError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyPermissions { path: path.to_owned(), mode });
    }
    if !meta.is_file() {
        return Err(CaError::Invalid { path: path.to_owned(), reason: "not a regular file".to_owned() });
    }
    let mut pem = String::new();
    file.read_to_string(&mut pem).map_err(io_err(path))?;
    Ok(pem)
}

/// Writes `bytes` to `path` with `mode`, atomically: a temporary file created with that mode,
/// synced, then hard-linked into place (which fails if `path` exists). Returns `false` when
/// `path` already existed (another process won the race).
fn write_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, CaError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let tmp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
        // The umask may have narrowed the mode; set it exactly (never wider than asked).
        file.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(path)(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Verifies `leaf` for `host` against `ca` alone with rustls's webpki verifier.
pub(crate) fn verify_leaf(
    ca: &CertificateDer<'static>,
    leaf: &[CertificateDer<'static>],
    host: &str,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let (end_entity, intermediates) = leaf.split_first().ok_or("empty chain")?;
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        end_entity,
        intermediates,
        &name,
        &[],
        UnixTime::now(),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_key_0600_and_cert_0644() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("nested/ca");
        let ca = CertAuthority::load_or_create(&home).unwrap();
        assert_eq!(mode(&home.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&home.join(CA_CERT_FILE)), 0o644);
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(fs::read_to_string(home.join(CA_CERT_FILE)).unwrap(), ca.ca_pem());
        // No temporary files left behind.
        assert_eq!(fs::read_dir(&home).unwrap().count(), 2);
    }

    #[test]
    fn reload_gives_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertAuthority::load_or_create(dir.path()).unwrap();
        let second = CertAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        let leaf = first.leaf_for("example.com").unwrap();
        verify_leaf(second.ca_der(), &leaf.cert, "example.com").unwrap();
    }

    #[test]
    fn two_installations_differ() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = CertAuthority::load_or_create(a.path()).unwrap();
        let b = CertAuthority::load_or_create(b.path()).unwrap();
        assert_ne!(a.ca_pem(), b.ca_pem());
        let leaf = a.leaf_for("example.com").unwrap();
        assert!(verify_leaf(b.ca_der(), &leaf.cert, "example.com").is_err());
    }

    #[test]
    fn leaf_verifies_for_its_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        let leaf = ca.leaf_for("API.Example.com").unwrap();
        assert_eq!(leaf.cert.len(), 2, "leaf + CA");
        verify_leaf(ca.ca_der(), &leaf.cert, "api.example.com").unwrap();
        let err = verify_leaf(ca.ca_der(), &leaf.cert, "other.example.com").unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        assert!(verify_leaf(ca.ca_der(), &leaf.cert, "example.com").is_err());
    }

    #[test]
    fn leaves_are_cached_per_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        let a = ca.leaf_for("a.example").unwrap();
        assert!(Arc::ptr_eq(&a, &ca.leaf_for("A.EXAMPLE").unwrap()));
        assert!(!Arc::ptr_eq(&a, &ca.leaf_for("b.example").unwrap()));
    }

    #[test]
    fn leaf_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        for i in 0..LEAF_CACHE_CAPACITY + 5 {
            ca.leaf_for(&format!("h{i}.example")).unwrap();
        }
        assert_eq!(ca.lock_leaves().len(), LEAF_CACHE_CAPACITY);
        assert!(!ca.lock_leaves().contains_key("h0.example"), "the oldest is evicted first");
    }

    #[test]
    fn refuses_names_that_are_not_dns_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        for bad in ["", "127.0.0.1", "a b.example", "exa_mple..com", "[::1]"] {
            assert!(matches!(ca.leaf_for(bad), Err(CaError::Leaf { .. })), "{bad:?}");
        }
    }

    #[test]
    fn loose_key_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        for loose in [0o640, 0o604, 0o644] {
            fs::set_permissions(&key, fs::Permissions::from_mode(loose)).unwrap();
            let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
            assert!(matches!(err, CaError::KeyPermissions { mode, .. } if mode == loose), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&key.display().to_string()) && msg.contains("chmod 600"), "{msg}");
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        CertAuthority::load_or_create(dir.path()).unwrap();
    }

    #[test]
    fn missing_cert_is_rebuilt_from_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertAuthority::load_or_create(dir.path()).unwrap();
        let leaf = first.leaf_for("example.com").unwrap();
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let rebuilt = CertAuthority::load_or_create(dir.path()).unwrap();
        // Same subject and key: leaves minted before still chain to the rebuilt certificate.
        verify_leaf(rebuilt.ca_der(), &leaf.cert, "example.com").unwrap();
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        CertAuthority::load_or_create(a.path()).unwrap();
        CertAuthority::load_or_create(b.path()).unwrap();
        fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).unwrap();
        let err = CertAuthority::load_or_create(a.path()).unwrap_err();
        assert!(matches!(err, CaError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn garbage_key_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        write_exclusive(&key, b"not a key", 0o600).unwrap();
        let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains(&key.display().to_string()), "{err}");
    }
}
