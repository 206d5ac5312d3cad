//! Host probing: can this machine run standard Linux guests under KVM?
//!
//! Owns the single decision the runtime uses to pick its backend. It never changes host state:
//! it opens `/dev/kvm` read-write (the only way to learn EACCES/ENOENT), asks the API version,
//! and checks for `/sys/module/kvm_pvm`, the paravirtual KVM that only runs PVM-patched guests
//! (see `vm-boot-feasibility.md` §1).

use std::path::Path;

/// What `/dev/kvm` offers on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    /// Hardware-backed KVM: standard Linux guests boot.
    Available,
    /// `/dev/kvm` is `kvm_pvm`: tiny hand-made guests run, standard Linux kernels cannot boot.
    Pvm {
        /// Human-readable explanation.
        reason: String,
    },
    /// `/dev/kvm` cannot be used (absent, permission denied, wrong API version…).
    Unavailable {
        /// Human-readable explanation naming the path and the error.
        reason: String,
    },
}

impl KvmStatus {
    /// True when `/dev/kvm` can be opened and used to create VMs at all (Available or Pvm).
    pub fn device_usable(&self) -> bool {
        !matches!(self, KvmStatus::Unavailable { .. })
    }
}

const KVM_DEV: &str = "/dev/kvm";
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Probes `/dev/kvm` and the loaded KVM vendor module.
pub fn kvm_status() -> KvmStatus {
    status_from(Path::new(KVM_DEV), Path::new(PVM_MODULE))
}

fn status_from(dev: &Path, pvm_module: &Path) -> KvmStatus {
    if !dev.exists() {
        return KvmStatus::Unavailable {
            reason: format!("{} does not exist (KVM not enabled on this host)", dev.display()),
        };
    }
    let Ok(cpath) = std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()) else {
        return KvmStatus::Unavailable { reason: format!("{} contains a NUL byte", dev.display()) };
    };
    let kvm = match kvm_ioctls::Kvm::new_with_path(&cpath) {
        Ok(k) => k,
        Err(e) => {
            let hint =
                if e.errno() == libc::EACCES { " (permission denied: add the user to the `kvm` group)" } else { "" };
            return KvmStatus::Unavailable { reason: format!("cannot open {}: {e}{hint}", dev.display()) };
        }
    };
    let api = kvm.get_api_version();
    if api != 12 {
        return KvmStatus::Unavailable {
            reason: format!("{} reports KVM API version {api}, expected 12", dev.display()),
        };
    }
    if pvm_module.exists() {
        return KvmStatus::Pvm {
            reason: format!(
                "{} exists: /dev/kvm is the paravirtual kvm_pvm, which emulates ring-0 guest \
                 code; standard Linux guests cannot boot (see vm-boot-feasibility.md §1)",
                pvm_module.display()
            ),
        };
    }
    KvmStatus::Available
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_unavailable_and_names_the_path() {
        let st = status_from(Path::new("/nonexistent/kvm"), Path::new("/nonexistent/pvm"));
        match st {
            KvmStatus::Unavailable { reason } => assert!(reason.contains("/nonexistent/kvm")),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn non_kvm_device_is_unavailable() {
        // /dev/null opens fine but rejects KVM_GET_API_VERSION.
        let st = status_from(Path::new("/dev/null"), Path::new("/nonexistent/pvm"));
        assert!(matches!(st, KvmStatus::Unavailable { .. }), "{st:?}");
    }

    #[test]
    fn host_status_is_one_of_the_documented_kinds() {
        let st = kvm_status();
        eprintln!("kvm_status on this host: {st:?}");
        match &st {
            KvmStatus::Available => {}
            KvmStatus::Pvm { reason } => assert!(reason.contains("kvm_pvm")),
            KvmStatus::Unavailable { reason } => assert!(reason.contains("/dev/kvm")),
        }
        if Path::new(PVM_MODULE).exists() && Path::new(KVM_DEV).exists() {
            assert!(matches!(st, KvmStatus::Pvm { .. } | KvmStatus::Unavailable { .. }), "{st:?}");
        }
    }
}
