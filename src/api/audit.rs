//! The audit trail of the operator API: every state-changing call, allowed or refused.
//!
//! Invariants:
//! - A handler that changes state calls [`audit`] once with the outcome (`ok`, `error: ...`);
//!   refusals before the handler (token, rate limit, role, body) are audited by
//!   [`super::gate`] as bounded, counted summaries.
//! - A failing audit write never turns a done change into an error answer: it is logged as an
//!   error (the change already happened), and the store's own health shows the fault.

use super::auth::Caller;
use super::ApiState;
use vpp_persistence::AuditEntry;

/// Writes one audit row for `caller`.
pub async fn audit(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    target: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    write(state, &caller.name, action, target, outcome, detail).await;
}

/// Audits the result of a handler: `ok` or the error's outcome.
pub async fn audit_result<T>(
    state: &ApiState,
    caller: &Caller,
    action: &str,
    target: &str,
    detail: serde_json::Value,
    result: &Result<T, super::ApiError>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.audit_outcome(),
    };
    audit(state, caller, action, target, &outcome, detail).await;
}

pub(crate) async fn write(
    state: &ApiState,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    // Bounded strings: a path or action from outside must not bloat the log.
    let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    let entry = AuditEntry {
        id: 0,
        at: chrono::Utc::now(),
        actor: cut(actor, 64),
        action: cut(action, 128),
        target: cut(target, 256),
        outcome: cut(outcome, 512),
        detail,
    };
    tracing::info!(target: "vpp::audit", actor = %entry.actor, action = %entry.action,
        target_ = %entry.target, outcome = %entry.outcome, "audit");
    if let Err(e) = state.store.insert_audit(&entry).await {
        tracing::error!(error = %e, action = %entry.action, "audit entry not written");
    }
}
