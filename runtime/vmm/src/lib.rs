//! capsem-vmm (skeleton).
