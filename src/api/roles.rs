//! The one role matrix of the operator API: every operation (method and path pattern), who may
//! call it, and its audit action name.
//!
//! Owns: [`OPERATIONS`], the lookup of a request to its operation ([`lookup`]), and the
//! markdown table docs/api.md carries ([`markdown_table`]).
//!
//! Invariants:
//! - [`super::gate`] enforces this table before any handler or body extractor runs: a path no
//!   operation matches is 404, a method the path does not take is 405 with `Allow`, a role
//!   below the operation's is 403. Handlers do not check roles of their own, except the one
//!   rule the table cannot see (the kill-switch scope in the body: [`kill_switch_role`]).
//! - The OpenAPI document lists exactly these operations, and docs/api.md's role table is
//!   [`markdown_table`] (both checked by tests).

use crate::token::Role;
use vpp_risk::KillScope;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed (health, metrics, the OpenAPI document, the dashboard's static files).
    Public,
    /// A token of at least this role.
    Min(Role),
    /// Trader for a strategy-scope kill switch, admin for aggregation and global scope.
    KillSwitch,
}

impl Access {
    /// The least role that may call at all (`None` when public).
    pub fn min_role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::Min(r) => Some(r),
            Access::KillSwitch => Some(Role::Trader),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Min(Role::Viewer) => "viewer",
            Access::Min(Role::Trader) => "trader",
            Access::Min(Role::Admin) => "admin",
            Access::KillSwitch => "trader (strategy scope) / admin",
        }
    }
}

/// One operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    pub method: &'static str,
    /// Path pattern; `{name}` matches one non-empty segment.
    pub path: &'static str,
    pub access: Access,
    /// Audit action name of a state-changing operation (`None` for reads).
    pub action: Option<&'static str>,
}

const fn op(
    method: &'static str,
    path: &'static str,
    access: Access,
    action: Option<&'static str>,
) -> Operation {
    Operation {
        method,
        path,
        access,
        action,
    }
}

const PUBLIC: Access = Access::Public;
const VIEWER: Access = Access::Min(Role::Viewer);
const TRADER: Access = Access::Min(Role::Trader);
const ADMIN: Access = Access::Min(Role::Admin);

/// Every operation the server answers. Order: as docs/api.md shows them.
pub const OPERATIONS: &[Operation] = &[
    // public
    op("GET", "/health", PUBLIC, None),
    op("GET", "/metrics", PUBLIC, None),
    op("GET", "/", PUBLIC, None),
    op("GET", "/index.html", PUBLIC, None),
    op("GET", "/dashboard.js", PUBLIC, None),
    op("GET", "/dashboard.css", PUBLIC, None),
    op("GET", "/api/v1/openapi.json", PUBLIC, None),
    // live engine
    op("GET", "/api/v1/engine", VIEWER, None),
    op("POST", "/api/v1/engine/stop", ADMIN, Some("engine.stop")),
    op("POST", "/api/v1/engine/start", ADMIN, Some("engine.start")),
    op("GET", "/api/v1/engine/orders", VIEWER, None),
    op("GET", "/api/v1/engine/positions", VIEWER, None),
    op("GET", "/api/v1/engine/shadow", VIEWER, None),
    op("GET", "/api/v1/aggregations/{id}/capacity", VIEWER, None),
    // risk
    op("GET", "/api/v1/risk/exposure", VIEWER, None),
    op("GET", "/api/v1/risk/kill-switch", VIEWER, None),
    op(
        "POST",
        "/api/v1/risk/kill-switch/engage",
        Access::KillSwitch,
        Some("kill_switch.engage"),
    ),
    op(
        "POST",
        "/api/v1/risk/kill-switch/release",
        Access::KillSwitch,
        Some("kill_switch.release"),
    ),
    op("GET", "/api/v1/risk/limits/{level}", VIEWER, None),
    op("GET", "/api/v1/risk/limits/{level}/{id}", VIEWER, None),
    op(
        "PUT",
        "/api/v1/risk/limits/{level}",
        ADMIN,
        Some("risk_limits.update"),
    ),
    op(
        "PUT",
        "/api/v1/risk/limits/{level}/{id}",
        ADMIN,
        Some("risk_limits.update"),
    ),
    op("GET", "/api/v1/risk/events", VIEWER, None),
    // markets
    op("GET", "/api/v1/markets/connections", VIEWER, None),
    op(
        "POST",
        "/api/v1/markets/connections/{venue}/{action}",
        ADMIN,
        Some("market.action"),
    ),
    // orders
    op("POST", "/api/v1/orders", TRADER, Some("order.new")),
    op(
        "DELETE",
        "/api/v1/orders/{id}",
        TRADER,
        Some("order.cancel"),
    ),
    op("GET", "/api/v1/orders", VIEWER, None),
    op("GET", "/api/v1/orders/{id}", VIEWER, None),
    op("GET", "/api/v1/orders/{id}/events", VIEWER, None),
    op("GET", "/api/v1/fills", VIEWER, None),
    op("GET", "/api/v1/positions", VIEWER, None),
    op("GET", "/api/v1/execution-records", VIEWER, None),
    op("GET", "/api/v1/dispatch/instructions", VIEWER, None),
    op("GET", "/api/v1/dispatch/deviations", VIEWER, None),
    // The audit log names tokens and who did what: admin only.
    op("GET", "/api/v1/audit", ADMIN, None),
    // catalog
    op("GET", "/api/v1/templates", VIEWER, None),
    op("POST", "/api/v1/templates", ADMIN, Some("template.create")),
    op("POST", "/api/v1/templates/validate", VIEWER, None),
    op("GET", "/api/v1/templates/{id}", VIEWER, None),
    op(
        "PUT",
        "/api/v1/templates/{id}",
        ADMIN,
        Some("template.update"),
    ),
    op(
        "DELETE",
        "/api/v1/templates/{id}",
        ADMIN,
        Some("template.delete"),
    ),
    op("GET", "/api/v1/templates/{id}/versions", VIEWER, None),
    op(
        "GET",
        "/api/v1/templates/{id}/versions/{version}",
        VIEWER,
        None,
    ),
    op("GET", "/api/v1/templates/{id}/usage", VIEWER, None),
    op("GET", "/api/v1/resources", VIEWER, None),
    op("POST", "/api/v1/resources", ADMIN, Some("resource.create")),
    op("GET", "/api/v1/resources/geojson", VIEWER, None),
    op("GET", "/api/v1/resources/{id}", VIEWER, None),
    op(
        "PATCH",
        "/api/v1/resources/{id}",
        ADMIN,
        Some("resource.update"),
    ),
    op(
        "PUT",
        "/api/v1/resources/{id}",
        ADMIN,
        Some("resource.update"),
    ),
    op(
        "DELETE",
        "/api/v1/resources/{id}",
        ADMIN,
        Some("resource.retire"),
    ),
    op("GET", "/api/v1/aggregations", VIEWER, None),
    op(
        "POST",
        "/api/v1/aggregations",
        ADMIN,
        Some("aggregation.create"),
    ),
    op("GET", "/api/v1/aggregations/conflicts", VIEWER, None),
    op("GET", "/api/v1/aggregations/{id}", VIEWER, None),
    op(
        "PUT",
        "/api/v1/aggregations/{id}",
        ADMIN,
        Some("aggregation.update"),
    ),
    op(
        "DELETE",
        "/api/v1/aggregations/{id}",
        ADMIN,
        Some("aggregation.delete"),
    ),
    op("GET", "/api/v1/aggregations/{id}/members", VIEWER, None),
    op(
        "POST",
        "/api/v1/aggregations/{id}/members",
        ADMIN,
        Some("aggregation.member.set"),
    ),
    op(
        "DELETE",
        "/api/v1/aggregations/{id}/members/{resource_id}",
        ADMIN,
        Some("aggregation.member.remove"),
    ),
    op(
        "POST",
        "/api/v1/aggregations/{id}/activate",
        ADMIN,
        Some("aggregation.activate"),
    ),
    op(
        "POST",
        "/api/v1/aggregations/{id}/deactivate",
        ADMIN,
        Some("aggregation.deactivate"),
    ),
    op("GET", "/api/v1/aggregations/{id}/conflicts", VIEWER, None),
    op("GET", "/api/v1/capacity", VIEWER, None),
    // strategies
    op("GET", "/api/v1/strategies", VIEWER, None),
    op("POST", "/api/v1/strategies", ADMIN, Some("strategy.create")),
    op("GET", "/api/v1/strategies/templates", VIEWER, None),
    op("POST", "/api/v1/strategies/validate", VIEWER, None),
    op("GET", "/api/v1/strategies/{id}", VIEWER, None),
    op(
        "PUT",
        "/api/v1/strategies/{id}",
        ADMIN,
        Some("strategy.update"),
    ),
    op(
        "DELETE",
        "/api/v1/strategies/{id}",
        ADMIN,
        Some("strategy.deactivate"),
    ),
    op("GET", "/api/v1/strategies/{id}/versions", VIEWER, None),
    op(
        "GET",
        "/api/v1/strategies/{id}/versions/{version}",
        VIEWER,
        None,
    ),
    op(
        "POST",
        "/api/v1/strategies/{id}/activate",
        ADMIN,
        Some("strategy.activate"),
    ),
    op(
        "POST",
        "/api/v1/strategies/{id}/deactivate",
        ADMIN,
        Some("strategy.deactivate"),
    ),
    op(
        "PUT",
        "/api/v1/strategies/{id}/shadow",
        ADMIN,
        Some("strategy.shadow"),
    ),
    op(
        "POST",
        "/api/v1/strategies/{id}/backtests",
        TRADER,
        Some("strategy.backtest"),
    ),
    op("GET", "/api/v1/backtests", VIEWER, None),
    op("GET", "/api/v1/backtests/{id}", VIEWER, None),
    // settlement
    op("GET", "/api/v1/settlement/records", VIEWER, None),
    op("GET", "/api/v1/settlement/records/{id}", VIEWER, None),
    op("GET", "/api/v1/settlement/analysis", VIEWER, None),
    op("GET", "/api/v1/settlement/reports", VIEWER, None),
    op("GET", "/api/v1/settlement/reports.csv", VIEWER, None),
    op("GET", "/api/v1/settlement/balances", VIEWER, None),
    // live feed, observability, dashboard session
    op("GET", "/api/v1/stream", VIEWER, None),
    op("GET", "/api/v1/latency", VIEWER, None),
    op("GET", "/api/v1/session", VIEWER, None),
];

/// How well `pattern` matches `path`: `None` when it does not, else the count of literal
/// segments (more is more specific: `/strategies/templates` beats `/strategies/{id}`).
fn matches(pattern: &str, path: &str) -> Option<usize> {
    let mut literal = 0;
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return Some(literal),
            (Some(ps), Some(ss)) => {
                if ps.starts_with('{') && ps.ends_with('}') {
                    if ss.is_empty() {
                        return None;
                    }
                } else if ps == ss {
                    literal += 1;
                } else {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// What the table says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(&'static Operation),
    /// The path exists but not with this method: the methods it takes.
    MethodNotAllowed(Vec<&'static str>),
    NotFound,
}

/// Finds the operation of `method path`: the most specific pattern that takes the method.
pub fn lookup(method: &str, path: &str) -> Lookup {
    let mut best: Option<(usize, &'static Operation)> = None;
    let mut best_any: Option<usize> = None;
    for o in OPERATIONS {
        let Some(score) = matches(o.path, path) else {
            continue;
        };
        best_any = Some(best_any.map_or(score, |b| b.max(score)));
        if o.method == method && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, o));
        }
    }
    if let Some((_, o)) = best {
        return Lookup::Found(o);
    }
    match best_any {
        None => Lookup::NotFound,
        Some(score) => {
            let mut methods: Vec<&'static str> = OPERATIONS
                .iter()
                .filter(|o| matches(o.path, path) == Some(score))
                .map(|o| o.method)
                .collect();
            methods.sort_unstable();
            methods.dedup();
            Lookup::MethodNotAllowed(methods)
        }
    }
}

/// The role a kill-switch action in `scope` needs.
pub fn kill_switch_role(scope: KillScope) -> Role {
    match scope {
        KillScope::Strategy(_) => Role::Trader,
        KillScope::Aggregation(_) | KillScope::Global => Role::Admin,
    }
}

/// Begin and end markers of the generated table in docs/api.md.
pub const DOC_BEGIN: &str = "<!-- role-matrix:begin (generated from src/api/roles.rs) -->";
pub const DOC_END: &str = "<!-- role-matrix:end -->";

/// The role table as docs/api.md shows it (between [`DOC_BEGIN`] and [`DOC_END`]).
pub fn markdown_table() -> String {
    let mut out =
        String::from("| method | path | role | audited as |\n| --- | --- | --- | --- |\n");
    for o in OPERATIONS {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            o.method,
            o.path,
            o.access.describe(),
            o.action
                .map_or_else(|| "-".to_owned(), |a| format!("`{a}`"))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_the_most_specific_pattern_and_knows_405() {
        let Lookup::Found(o) = lookup("GET", "/api/v1/strategies/templates") else {
            panic!("templates not found")
        };
        assert_eq!(o.path, "/api/v1/strategies/templates");
        let Lookup::Found(o) = lookup("PUT", "/api/v1/strategies/7") else {
            panic!()
        };
        assert_eq!(o.access, ADMIN);
        assert_eq!(
            lookup("TRACE", "/api/v1/engine"),
            Lookup::MethodNotAllowed(vec!["GET"])
        );
        assert_eq!(
            lookup("GET", "/api/v1/engine/stop"),
            Lookup::MethodNotAllowed(vec!["POST"])
        );
        assert_eq!(lookup("GET", "/api/v1/nope"), Lookup::NotFound);
        assert_eq!(lookup("GET", "/api/v1/strategies/"), Lookup::NotFound);
        let Lookup::Found(o) = lookup("PUT", "/api/v1/risk/limits/strategy_defaults") else {
            panic!()
        };
        assert_eq!(o.action, Some("risk_limits.update"));
    }

    #[test]
    fn every_state_change_has_an_action_and_no_duplicates() {
        for (i, o) in OPERATIONS.iter().enumerate() {
            let reads = matches!(o.method, "GET") || o.path.ends_with("/validate");
            assert_eq!(o.action.is_none(), reads, "{} {}", o.method, o.path);
            assert!(
                !OPERATIONS[..i]
                    .iter()
                    .any(|p| p.method == o.method && p.path == o.path),
                "{} {} twice",
                o.method,
                o.path
            );
        }
    }

    #[test]
    fn docs_api_md_carries_the_generated_table() {
        let doc = include_str!("../../docs/api.md");
        let start = doc
            .find(DOC_BEGIN)
            .expect("docs/api.md has the role-matrix markers")
            + DOC_BEGIN.len();
        let end = doc.find(DOC_END).expect("end marker");
        assert_eq!(
            doc[start..end].trim(),
            markdown_table().trim(),
            "docs/api.md's role table differs from src/api/roles.rs; put this between the \
             markers:\n{}",
            markdown_table()
        );
    }
}
