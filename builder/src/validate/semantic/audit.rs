//! build.toml `[audit]`: the policy `capsem-builder audit` applies — `fail_on` and the `allow`
//! list of advisory ids (E022 for a malformed id, W017 for one listed twice).

use std::collections::BTreeMap;

use super::Cx;
use crate::diag::{Code, Diagnostic};
use crate::model::{AuditPolicy, FailOn};
use crate::rawconfig::RawAudit;
use crate::source::Loc;
use crate::validate::checks;

/// Checks `[audit]`; absent, the defaults (`fail_on = "high"`, nothing allowed).
pub(super) fn audit(cx: &Cx<'_>, a: Option<&RawAudit>) -> Option<AuditPolicy> {
    let Some(a) = a else { return Some(AuditPolicy::default()) };
    let fail_on = match &a.fail_on {
        Some(f) => cx.choice(f, "audit threshold (fail_on)", FailOn::NAMES, FailOn::parse),
        None => Some(FailOn::High),
    };
    let mut allow = BTreeMap::<String, Loc>::new();
    for id in a.allow.as_ref().map_or(&[][..], |l| &l.value[..]) {
        if let Err(why) = checks::advisory_id(&id.value) {
            let help = match checks::advisory_form(&id.value) {
                Some((_, example)) => format!("write the id as the scanner reports it, e.g. `{example}`"),
                None => {
                    let forms: Vec<String> = checks::ADVISORY_FORMS.iter().map(|(_, e)| format!("`{e}`")).collect();
                    format!("write the id as the scanner reports it, one of: {}", forms.join(", "))
                }
            };
            cx.err(Code::BadAdvisoryId, &id.loc, format!("{why} (in [audit] allow)"), help);
            continue;
        }
        if let Some(first) = allow.get(&id.value) {
            cx.sink.push(
                Diagnostic::at(
                    Code::DuplicateAdvisoryId,
                    id.loc.clone(),
                    format!("`{}` is already allowed at {}", id.value, cx.where_(first)),
                )
                .help("remove the second entry"),
            );
            continue;
        }
        allow.insert(id.value.clone(), id.loc.clone());
    }
    Some(AuditPolicy { fail_on: fail_on?, allow: allow.into_keys().collect() })
}
