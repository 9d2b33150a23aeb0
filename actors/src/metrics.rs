//! Metrics: per-stage latency histograms, counters and gauges, and their two renderings
//! (the `vpp latency` percentile table and the Prometheus text format).
//!
//! Owns the [`Metrics`] registry. Handles ([`LatencyRecorder`], [`Counter`], [`Gauge`]) are
//! registered once at wiring time (a map lookup under a lock, cold path) and then used on the
//! hot path without any lookup or allocation:
//! - recording a latency locks one uncontended mutex around one fixed-size hdrhistogram
//!   (bounds 1 ns .. 60 s, 2 significant digits, so ~0.8 % value precision and ~30 KiB per
//!   series; values above 60 s are clamped, never lost);
//! - counters and gauges are single atomics.
//!
//! Invariants:
//! - Latencies are recorded in nanoseconds and reported in microseconds (`*_us`).
//! - The number of series per kind is bounded by [`MAX_SERIES_PER_KIND`]; past it, a handle is
//!   still returned (callers never fail) but it is detached and not exported, and a warning is
//!   logged once per registration.
//! - A snapshot is a consistent copy per series (each histogram is read under its own lock).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Highest latency a histogram holds; larger values are clamped to it.
pub const LATENCY_HIGHEST_NS: u64 = 60_000_000_000;
/// hdrhistogram precision: 2 digits keeps each series small (~30 KiB) at ~0.8 % error.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 2;
/// Bound on registered series per kind (latency, counter, gauge).
pub const MAX_SERIES_PER_KIND: usize = 4096;

/// Prometheus family name of the latency summaries.
pub const LATENCY_FAMILY: &str = "vpp_stage_latency_us";
/// Prometheus family name of the latency maxima.
pub const LATENCY_MAX_FAMILY: &str = "vpp_stage_latency_max_us";

/// Well-known counter and gauge names, so every crate spells them the same way.
pub mod names {
    /// Orders by state (label `state`).
    pub const ORDERS_TOTAL: &str = "vpp_orders_total";
    /// Rejects by reason (label `reason`).
    pub const REJECTS_TOTAL: &str = "vpp_rejects_total";
    /// Venue reconnects (label `connection`).
    pub const RECONNECTS_TOTAL: &str = "vpp_reconnects_total";
    /// Actor restarts by the supervisor (label `actor`).
    pub const RESTARTS_TOTAL: &str = "vpp_actor_restarts_total";
    /// Escalations past the restart limit (label `actor`).
    pub const ESCALATIONS_TOTAL: &str = "vpp_actor_escalations_total";
    /// Messages refused by an actor or its mailbox (labels `actor`, `reason`).
    pub const REFUSALS_TOTAL: &str = "vpp_refusals_total";
    /// Market-data values overwritten before delivery (label `consumer`).
    pub const CONFLATED_TOTAL: &str = "vpp_conflated_messages_total";
    /// Telemetry samples ingested.
    pub const TELEMETRY_SAMPLES_TOTAL: &str = "vpp_telemetry_samples_total";
    /// Gauge: 1 while an actor is halted past its restart limit (label `actor`).
    pub const ACTOR_HALTED: &str = "vpp_actor_halted";
    /// Gauge: the deepest a bounded queue has been (label `queue`): the connector's command
    /// queue, its outbox to the OMS, the adapter's event queue, a strategy's market data keys.
    pub const QUEUE_DEPTH_MAX: &str = "vpp_queue_depth_max";
}

/// A stage of the tick-to-order and telemetry pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    MarketDataDecode,
    StrategyDecision,
    RiskCheck,
    OmsToWire,
    VenueRoundtripAck,
    TelemetryToCapacity,
    JournalCommitLag,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::MarketDataDecode,
        Stage::StrategyDecision,
        Stage::RiskCheck,
        Stage::OmsToWire,
        Stage::VenueRoundtripAck,
        Stage::TelemetryToCapacity,
        Stage::JournalCommitLag,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::MarketDataDecode => "market_data_decode",
            Stage::StrategyDecision => "strategy_decision",
            Stage::RiskCheck => "risk_check",
            Stage::OmsToWire => "oms_to_wire",
            Stage::VenueRoundtripAck => "venue_roundtrip_ack",
            Stage::TelemetryToCapacity => "telemetry_to_capacity",
            Stage::JournalCommitLag => "journal_commit_lag",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One histogram plus the exact sum (hdrhistogram only keeps bucketed values).
struct LatencySeries {
    histogram: Histogram<u64>,
    sum_ns: u64,
}

impl LatencySeries {
    fn new() -> Self {
        // The bounds are constants checked by a unit test, never external input.
        let histogram =
            Histogram::new_with_bounds(1, LATENCY_HIGHEST_NS, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid");
        Self {
            histogram,
            sum_ns: 0,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a metrics lock cannot leave a histogram or map half-updated in a
    // way that matters for reporting, so a poisoned lock is simply taken over.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hot-path handle for one (stage, scope) latency series. Cloning shares the series.
#[derive(Clone)]
pub struct LatencyRecorder {
    series: Arc<Mutex<LatencySeries>>,
}

impl LatencyRecorder {
    /// Records one latency in nanoseconds. No allocation; values above 60 s are clamped.
    pub fn record_ns(&self, latency_ns: u64) {
        let mut series = lock(&self.series);
        series.histogram.saturating_record(latency_ns);
        series.sum_ns = series.sum_ns.saturating_add(latency_ns);
    }

    pub fn record(&self, latency: Duration) {
        self.record_ns(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records the time elapsed since `start`.
    pub fn record_since(&self, start: Instant) {
        self.record(start.elapsed());
    }

    /// Records `end_ns - start_ns` of a monotonic clock (e.g. `Clock::monotonic_ns`);
    /// an end before the start records zero rather than wrapping.
    pub fn record_between(&self, start_ns: u64, end_ns: u64) {
        self.record_ns(end_ns.saturating_sub(start_ns));
    }

    fn stats(&self, stage: Stage, scope: &str) -> LatencyStats {
        let series = lock(&self.series);
        let h = &series.histogram;
        let us = |ns: u64| ns as f64 / 1_000.0;
        LatencyStats {
            stage,
            scope: scope.to_owned(),
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            sum_us: us(series.sum_ns),
        }
    }
}

/// Monotonic counter handle. Cloning shares the value.
#[derive(Clone, Debug, Default)]
pub struct Counter {
    value: Arc<AtomicU64>,
}

impl Counter {
    /// A counter that is not exported anywhere (for tests and optional wiring).
    pub fn detached() -> Self {
        Self::default()
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Gauge handle (a value that goes up and down). Cloning shares the value.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    value: Arc<AtomicI64>,
}

impl Gauge {
    pub fn detached() -> Self {
        Self::default()
    }
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, delta: i64) {
        self.value.fetch_add(delta, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
    /// Raises the gauge to `v` if it is higher (a high-water mark, e.g. a queue's depth).
    pub fn set_max(&self, v: i64) {
        self.value.fetch_max(v, Ordering::Relaxed);
    }
}

/// Name plus sorted labels of a counter or gauge series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
}

impl SeriesKey {
    fn new(name: &'static str, labels: &[(&'static str, &str)]) -> Self {
        let mut labels: Vec<(&'static str, String)> =
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        labels.sort();
        Self { name, labels }
    }
}

#[derive(Default)]
struct Registry {
    latencies: Mutex<BTreeMap<(Stage, String), LatencyRecorder>>,
    counters: Mutex<BTreeMap<SeriesKey, Counter>>,
    gauges: Mutex<BTreeMap<SeriesKey, Gauge>>,
}

/// The metrics registry. Cheap to clone; all clones share the same series.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<Registry>,
}

fn get_or_register<K: Ord + std::fmt::Debug, V: Clone>(
    map: &Mutex<BTreeMap<K, V>>,
    key: K,
    make: impl FnOnce() -> V,
) -> V {
    let mut map = lock(map);
    if let Some(existing) = map.get(&key) {
        return existing.clone();
    }
    let handle = make();
    if map.len() >= MAX_SERIES_PER_KIND {
        tracing::warn!(
            ?key,
            max = MAX_SERIES_PER_KIND,
            "metrics series limit reached; this series is recorded but not exported"
        );
        return handle;
    }
    map.insert(key, handle.clone());
    handle
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// The latency series of `stage` for `scope` (a connection or strategy name).
    pub fn latency(&self, stage: Stage, scope: &str) -> LatencyRecorder {
        get_or_register(&self.registry.latencies, (stage, scope.to_owned()), || {
            LatencyRecorder {
                series: Arc::new(Mutex::new(LatencySeries::new())),
            }
        })
    }

    /// The counter `name` with `labels`; see [`names`].
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        get_or_register(
            &self.registry.counters,
            SeriesKey::new(name, labels),
            Counter::default,
        )
    }

    /// The gauge `name` with `labels`; see [`names`].
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        get_or_register(
            &self.registry.gauges,
            SeriesKey::new(name, labels),
            Gauge::default,
        )
    }

    /// A copy of every exported series.
    pub fn snapshot(&self) -> MetricsSnapshot {
        // Clone the handles first so no registry lock is held while histograms are read.
        let latencies: Vec<((Stage, String), LatencyRecorder)> = lock(&self.registry.latencies)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let latencies = latencies
            .iter()
            .map(|((stage, scope), rec)| rec.stats(*stage, scope))
            .collect();
        let counters = lock(&self.registry.counters)
            .iter()
            .map(|(k, c)| CounterSample {
                name: k.name.to_owned(),
                labels: owned_labels(&k.labels),
                value: c.get(),
            })
            .collect();
        let gauges = lock(&self.registry.gauges)
            .iter()
            .map(|(k, g)| GaugeSample {
                name: k.name.to_owned(),
                labels: owned_labels(&k.labels),
                value: g.get(),
            })
            .collect();
        MetricsSnapshot {
            latencies,
            counters,
            gauges,
        }
    }
}

fn owned_labels(labels: &[(&'static str, String)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// Percentiles of one latency series, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub stage: Stage,
    pub scope: String,
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Exact sum of the recorded values (for the Prometheus `_sum`).
    pub sum_us: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GaugeSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: i64,
}

/// A point-in-time copy of all metrics, sorted by stage/scope and by name/labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub latencies: Vec<LatencyStats>,
    pub counters: Vec<CounterSample>,
    pub gauges: Vec<GaugeSample>,
}

impl MetricsSnapshot {
    pub fn latency(&self, stage: Stage, scope: &str) -> Option<&LatencyStats> {
        self.latencies
            .iter()
            .find(|s| s.stage == stage && s.scope == scope)
    }

    /// Value of the counter `name` whose labels are exactly `labels` (any order).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        self.counters
            .iter()
            .find(|c| c.name == name && labels_match(&c.labels, labels))
            .map(|c| c.value)
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<i64> {
        self.gauges
            .iter()
            .find(|g| g.name == name && labels_match(&g.labels, labels))
            .map(|g| g.value)
    }

    /// The percentile table `vpp latency` prints (microseconds, one row per series).
    pub fn latency_table(&self) -> String {
        if self.latencies.is_empty() {
            return "no latency samples recorded yet\n".to_owned();
        }
        let mut out = format!(
            "{:<22} {:<16} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
            "STAGE", "SCOPE", "COUNT", "P50_US", "P90_US", "P99_US", "P99.9_US", "MAX_US"
        );
        for s in &self.latencies {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{:<22} {:<16} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                s.stage.as_str(),
                s.scope,
                s.count,
                s.p50_us,
                s.p90_us,
                s.p99_us,
                s.p999_us,
                s.max_us
            );
        }
        out
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        self.render_latencies(&mut out);
        render_family(&mut out, "counter", &self.counters, |c| c.value.to_string());
        render_family(&mut out, "gauge", &self.gauges, |g| g.value.to_string());
        out
    }

    fn render_latencies(&self, out: &mut String) {
        if self.latencies.is_empty() {
            return;
        }
        let _ = writeln!(out, "# TYPE {LATENCY_FAMILY} summary");
        for s in &self.latencies {
            let labels = format!(
                "stage=\"{}\",scope=\"{}\"",
                s.stage.as_str(),
                escape_label(&s.scope)
            );
            for (q, v) in [
                ("0.5", s.p50_us),
                ("0.9", s.p90_us),
                ("0.99", s.p99_us),
                ("0.999", s.p999_us),
            ] {
                let _ = writeln!(out, "{LATENCY_FAMILY}{{{labels},quantile=\"{q}\"}} {v}");
            }
            let _ = writeln!(out, "{LATENCY_FAMILY}_sum{{{labels}}} {}", s.sum_us);
            let _ = writeln!(out, "{LATENCY_FAMILY}_count{{{labels}}} {}", s.count);
        }
        let _ = writeln!(out, "# TYPE {LATENCY_MAX_FAMILY} gauge");
        for s in &self.latencies {
            let _ = writeln!(
                out,
                "{LATENCY_MAX_FAMILY}{{stage=\"{}\",scope=\"{}\"}} {}",
                s.stage.as_str(),
                escape_label(&s.scope),
                s.max_us
            );
        }
    }
}

/// Either a counter or a gauge sample, for the shared family renderer.
trait Sample {
    fn name(&self) -> &str;
    fn labels(&self) -> &[(String, String)];
}

impl Sample for CounterSample {
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> &[(String, String)] {
        &self.labels
    }
}

impl Sample for GaugeSample {
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> &[(String, String)] {
        &self.labels
    }
}

/// Renders samples sorted by name: one `# TYPE` line per family, then its series.
fn render_family<S: Sample>(
    out: &mut String,
    kind: &str,
    samples: &[S],
    value: impl Fn(&S) -> String,
) {
    let mut current: Option<&str> = None;
    for s in samples {
        if current != Some(s.name()) {
            let _ = writeln!(out, "# TYPE {} {kind}", s.name());
            current = Some(s.name());
        }
        out.push_str(s.name());
        if !s.labels().is_empty() {
            out.push('{');
            for (i, (k, v)) in s.labels().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", value(s));
    }
}

fn labels_match(have: &[(String, String)], want: &[(&str, &str)]) -> bool {
    have.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

/// Escapes a label value per the exposition format: backslash, double quote, newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual_us: f64, expected_us: f64) {
        // hdrhistogram with 2 significant digits: within 1 % of the true value.
        let tolerance = expected_us * 0.01;
        assert!(
            (actual_us - expected_us).abs() <= tolerance,
            "expected {expected_us} us (+-1 %), got {actual_us} us"
        );
    }

    #[test]
    fn percentiles_of_known_samples() {
        let metrics = Metrics::new();
        let rec = metrics.latency(Stage::RiskCheck, "strategy-a");
        for us in 1..=1_000u64 {
            rec.record_ns(us * 1_000);
        }
        let snap = metrics.snapshot();
        let s = snap
            .latency(Stage::RiskCheck, "strategy-a")
            .expect("series registered");
        assert_eq!(s.count, 1_000);
        assert_close(s.p50_us, 500.0);
        assert_close(s.p90_us, 900.0);
        assert_close(s.p99_us, 990.0);
        assert_close(s.p999_us, 999.0);
        assert_close(s.max_us, 1_000.0);
        assert_eq!(s.sum_us, 500_500.0);
    }

    #[test]
    fn handles_share_series_and_values_are_clamped() {
        let metrics = Metrics::new();
        let a = metrics.latency(Stage::OmsToWire, "conn-1");
        let b = metrics.latency(Stage::OmsToWire, "conn-1");
        a.record(Duration::from_micros(10));
        b.record_ns(u64::MAX);
        b.record_between(50, 10);
        let snap = metrics.snapshot();
        let s = snap.latency(Stage::OmsToWire, "conn-1").expect("series");
        assert_eq!(s.count, 3);
        assert_close(s.max_us, LATENCY_HIGHEST_NS as f64 / 1_000.0);
        assert_eq!(snap.latencies.len(), 1);
    }

    #[test]
    fn counters_and_gauges_are_keyed_by_sorted_labels() {
        let metrics = Metrics::new();
        let c1 = metrics.counter(
            names::REFUSALS_TOTAL,
            &[("actor", "oms"), ("reason", "full")],
        );
        let c2 = metrics.counter(
            names::REFUSALS_TOTAL,
            &[("reason", "full"), ("actor", "oms")],
        );
        c1.inc();
        c2.add(2);
        metrics
            .gauge(names::ACTOR_HALTED, &[("actor", "s1")])
            .set(1);
        let snap = metrics.snapshot();
        assert_eq!(
            snap.counter(
                names::REFUSALS_TOTAL,
                &[("reason", "full"), ("actor", "oms")]
            ),
            Some(3)
        );
        assert_eq!(snap.gauge(names::ACTOR_HALTED, &[("actor", "s1")]), Some(1));
        assert_eq!(
            snap.counter(names::REFUSALS_TOTAL, &[("actor", "oms")]),
            None
        );
    }

    fn known_snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            latencies: vec![LatencyStats {
                stage: Stage::StrategyDecision,
                scope: "battery \"1\"".to_owned(),
                count: 4,
                p50_us: 2.5,
                p90_us: 10.0,
                p99_us: 12.25,
                p999_us: 12.25,
                max_us: 13.0,
                sum_us: 30.5,
            }],
            counters: vec![
                CounterSample {
                    name: names::ORDERS_TOTAL.to_owned(),
                    labels: vec![("state".to_owned(), "filled".to_owned())],
                    value: 7,
                },
                CounterSample {
                    name: names::ORDERS_TOTAL.to_owned(),
                    labels: vec![("state".to_owned(), "new".to_owned())],
                    value: 9,
                },
                CounterSample {
                    name: names::TELEMETRY_SAMPLES_TOTAL.to_owned(),
                    labels: vec![],
                    value: 3,
                },
            ],
            gauges: vec![GaugeSample {
                name: names::ACTOR_HALTED.to_owned(),
                labels: vec![("actor".to_owned(), "s\\2".to_owned())],
                value: 1,
            }],
        }
    }

    #[test]
    fn prometheus_rendering_of_known_snapshot() {
        let expected = "\
# TYPE vpp_stage_latency_us summary
vpp_stage_latency_us{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\",quantile=\"0.5\"} 2.5
vpp_stage_latency_us{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\",quantile=\"0.9\"} 10
vpp_stage_latency_us{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\",quantile=\"0.99\"} 12.25
vpp_stage_latency_us{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\",quantile=\"0.999\"} 12.25
vpp_stage_latency_us_sum{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\"} 30.5
vpp_stage_latency_us_count{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\"} 4
# TYPE vpp_stage_latency_max_us gauge
vpp_stage_latency_max_us{stage=\"strategy_decision\",scope=\"battery \\\"1\\\"\"} 13
# TYPE vpp_orders_total counter
vpp_orders_total{state=\"filled\"} 7
vpp_orders_total{state=\"new\"} 9
# TYPE vpp_telemetry_samples_total counter
vpp_telemetry_samples_total 3
# TYPE vpp_actor_halted gauge
vpp_actor_halted{actor=\"s\\\\2\"} 1
";
        assert_eq!(known_snapshot().prometheus(), expected);
    }

    #[test]
    fn latency_table_of_known_snapshot() {
        let table = known_snapshot().latency_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            ["STAGE", "SCOPE", "COUNT", "P50_US", "P90_US", "P99_US", "P99.9_US", "MAX_US"]
        );
        assert!(lines[1].starts_with("strategy_decision      battery \"1\""));
        let numbers: Vec<&str> = lines[1]["strategy_decision      battery \"1\"".len()..]
            .split_whitespace()
            .collect();
        assert_eq!(numbers, ["4", "2.5", "10.0", "12.2", "12.2", "13.0"]);
        assert_eq!(
            MetricsSnapshot::default().latency_table(),
            "no latency samples recorded yet\n"
        );
    }

    #[test]
    fn snapshot_from_live_registry_renders_every_stage() {
        let metrics = Metrics::new();
        for stage in Stage::ALL {
            metrics.latency(stage, "x").record_ns(2_000);
        }
        let snap = metrics.snapshot();
        let prom = snap.prometheus();
        for stage in Stage::ALL {
            let needle = format!(
                "{LATENCY_FAMILY}_count{{stage=\"{}\",scope=\"x\"}} 1\n",
                stage.as_str()
            );
            assert!(prom.contains(&needle), "missing {needle} in\n{prom}");
            assert!(snap.latency_table().contains(stage.as_str()));
        }
    }
}
