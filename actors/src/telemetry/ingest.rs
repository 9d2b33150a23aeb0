//! The ingest decision for one received message: topic → resource, payload → [`Telemetry`],
//! bounds, clock and ordering checks, and the bookkeeping of what was refused and why.
//!
//! Invariants:
//! - [`Ingestor::ingest`] never panics and never blocks; it returns the accepted
//!   [`TelemetrySample`] or the [`RejectReason`], and every rejection is counted in
//!   `vpp_telemetry_rejected_total{source,reason}` and logged at warn at most once per
//!   reason per `log_every` (the log line carries how many were suppressed since).
//! - Per resource, accepted sample timestamps strictly increase: a sample not newer than the
//!   last accepted one is `stale` (an equal timestamp is a duplicate, as in the engine).
//! - A sample older than `now - max_age` is `too_old`; one newer than `now + max_future_skew`
//!   is `future` (it would otherwise make every later honest sample look stale).
//! - Per-resource state is a `Vec` indexed by registry slot: bounded by the registry.

use super::payload::{decode_telemetry, PayloadError};
use super::registry::{ResourceRegistry, TopicKind};
use super::TelemetrySample;
use crate::metrics::{Counter, Metrics};
use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;
use vpp_engine::clock::Clock;
use vpp_engine::Timestamp;

/// Counter of accepted samples (label `source`).
pub const INGESTED_TOTAL: &str = "vpp_telemetry_ingested_total";
/// Counter of refused payloads (labels `source`, `reason`).
pub const REJECTED_TOTAL: &str = "vpp_telemetry_rejected_total";

/// Why a message did not become a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The topic is not `<root>/<site>/<resource>/telemetry`.
    Topic,
    /// More bytes than `max_payload_bytes`.
    TooLarge,
    /// Not the documented JSON (see [`super::payload`]).
    Malformed,
    /// (site, resource) is not in the registry.
    UnknownResource,
    /// `Telemetry::validate` refused it (power or SoC out of bounds).
    OutOfRange,
    /// Not newer than the last accepted sample of the resource.
    Stale,
    /// Older than `max_age` before now.
    TooOld,
    /// More than `max_future_skew` ahead of now.
    Future,
    /// The sink refused the batch it was in (telemetry is state: the next sample supersedes).
    SinkFull,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Topic,
        RejectReason::TooLarge,
        RejectReason::Malformed,
        RejectReason::UnknownResource,
        RejectReason::OutOfRange,
        RejectReason::Stale,
        RejectReason::TooOld,
        RejectReason::Future,
        RejectReason::SinkFull,
    ];

    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Topic => "topic",
            RejectReason::TooLarge => "too_large",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownResource => "unknown_resource",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::Stale => "stale",
            RejectReason::TooOld => "too_old",
            RejectReason::Future => "future",
            RejectReason::SinkFull => "sink_full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Limits and clock tolerances of the ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Largest payload decoded; larger ones are `too_large`.
    pub max_payload_bytes: usize,
    /// Oldest sample accepted, relative to the injected clock.
    pub max_age: chrono::Duration,
    /// How far ahead of the clock a device's timestamp may be.
    pub max_future_skew: chrono::Duration,
    /// At most one warning per reason per this period.
    pub log_every: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 4096,
            max_age: chrono::Duration::seconds(60),
            max_future_skew: chrono::Duration::seconds(5),
            log_every: Duration::from_secs(10),
        }
    }
}

/// At most one log line per period; counts what it held back.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimit {
    last_ns: Option<u64>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(suppressed since the last line)` if a line may be logged at `now_ns`.
    pub fn permit(&mut self, now_ns: u64, every_ns: u64) -> Option<u64> {
        match self.last_ns {
            Some(last) if now_ns.saturating_sub(last) < every_ns => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_ns = Some(now_ns);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Decides, counts and logs; owns the per-resource last timestamps.
pub struct Ingestor {
    registry: Arc<ResourceRegistry>,
    clock: Arc<dyn Clock>,
    config: IngestConfig,
    source: String,
    last_at: Vec<Option<Timestamp>>,
    accepted: Counter,
    rejected: Vec<Counter>,
    logs: Vec<RateLimit>,
    logged: u64,
}

impl Ingestor {
    /// `source` labels the counters (e.g. `mqtt`).
    pub fn new(
        registry: Arc<ResourceRegistry>,
        clock: Arc<dyn Clock>,
        config: IngestConfig,
        metrics: &Metrics,
        source: &str,
    ) -> Self {
        let rejected = RejectReason::ALL
            .iter()
            .map(|r| {
                metrics.counter(
                    REJECTED_TOTAL,
                    &[("source", source), ("reason", r.as_str())],
                )
            })
            .collect();
        Self {
            last_at: vec![None; registry.len()],
            accepted: metrics.counter(INGESTED_TOTAL, &[("source", source)]),
            rejected,
            logs: vec![RateLimit::default(); RejectReason::ALL.len()],
            registry,
            clock,
            config,
            source: source.to_owned(),
            logged: 0,
        }
    }

    pub fn registry(&self) -> &Arc<ResourceRegistry> {
        &self.registry
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    /// One received message: the accepted sample, or the (counted, logged) reason it was not.
    pub fn ingest(&mut self, topic: &str, payload: &[u8]) -> Result<TelemetrySample, RejectReason> {
        let received_ns = self.clock.monotonic_ns();
        match self.decide(topic, payload, received_ns) {
            Ok(sample) => {
                self.accepted.inc();
                Ok(sample)
            }
            Err((reason, detail)) => {
                self.reject(reason, topic, detail);
                Err(reason)
            }
        }
    }

    fn decide(
        &mut self,
        topic: &str,
        payload: &[u8],
        received_ns: u64,
    ) -> Result<TelemetrySample, (RejectReason, String)> {
        let slot = self.slot(topic)?;
        let telemetry = decode_telemetry(payload, self.config.max_payload_bytes).map_err(|e| {
            let reason = match e {
                PayloadError::TooLarge { .. } => RejectReason::TooLarge,
                _ => RejectReason::Malformed,
            };
            (reason, e.to_string())
        })?;
        telemetry
            .validate()
            .map_err(|e| (RejectReason::OutOfRange, e.to_string()))?;
        self.check_time(slot, telemetry.at)?;
        self.last_at[slot] = Some(telemetry.at);
        let resource_id = self
            .registry
            .id_at(slot)
            .ok_or((RejectReason::UnknownResource, String::new()))?;
        Ok(TelemetrySample {
            resource_id,
            telemetry,
            received_ns,
        })
    }

    fn slot(&self, topic: &str) -> Result<usize, (RejectReason, String)> {
        let Some((site, name, TopicKind::Telemetry)) = self.registry.parse_topic(topic) else {
            return Err((RejectReason::Topic, "not a telemetry topic".to_owned()));
        };
        match self.registry.slot_of(site, name) {
            Some(slot) if slot < self.last_at.len() => Ok(slot),
            _ => Err((
                RejectReason::UnknownResource,
                format!("no resource {name:?} at site {site:?} in the registry"),
            )),
        }
    }

    fn check_time(&self, slot: usize, at: Timestamp) -> Result<(), (RejectReason, String)> {
        let now = self.clock.now();
        if at > now + self.config.max_future_skew {
            return Err((
                RejectReason::Future,
                format!(
                    "timestamp {at} is ahead of now {now} by more than {}",
                    self.config.max_future_skew
                ),
            ));
        }
        if at < now - self.config.max_age {
            return Err((
                RejectReason::TooOld,
                format!(
                    "timestamp {at} is older than the maximum age {} (now {now})",
                    self.config.max_age
                ),
            ));
        }
        if let Some(last) = self.last_at[slot] {
            if at <= last {
                return Err((
                    RejectReason::Stale,
                    format!("timestamp {at} is not newer than the last accepted {last}"),
                ));
            }
        }
        Ok(())
    }

    /// Counts a rejection and logs it if this reason has not logged within `log_every`.
    pub fn reject(&mut self, reason: RejectReason, topic: &str, detail: impl Display) {
        self.reject_n(reason, 1, topic, detail);
    }

    /// Counts `n` rejections for one reason (e.g. a refused batch) with one rate-limited line.
    pub fn reject_n(&mut self, reason: RejectReason, n: u64, topic: &str, detail: impl Display) {
        let i = reason.index();
        self.rejected[i].add(n);
        let every_ns = u64::try_from(self.config.log_every.as_nanos()).unwrap_or(u64::MAX);
        if let Some(suppressed) = self.logs[i].permit(self.clock.monotonic_ns(), every_ns) {
            self.logged += 1;
            tracing::warn!(
                source = %self.source,
                reason = reason.as_str(),
                topic,
                count = n,
                suppressed,
                "telemetry refused: {detail}"
            );
        }
    }

    /// How many messages were refused for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].get()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }

    /// How many warnings were actually written (the rest were rate-limited).
    pub fn warnings_logged(&self) -> u64 {
        self.logged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use rust_decimal::Decimal;
    use vpp_engine::clock::ManualClock;
    use vpp_engine::ids::ResourceId;

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    fn setup() -> (Ingestor, ManualClock, Metrics) {
        let mut registry = ResourceRegistry::new("vpp", 10).unwrap();
        registry.insert("park", "bess", ResourceId(7)).unwrap();
        let clock = ManualClock::new(t0());
        let metrics = Metrics::new();
        let ingestor = Ingestor::new(
            Arc::new(registry),
            Arc::new(clock.clone()),
            IngestConfig::default(),
            &metrics,
            "test",
        );
        (ingestor, clock, metrics)
    }

    fn payload(power: &str, secs: i64) -> Vec<u8> {
        let at = (t0() + chrono::Duration::seconds(secs)).to_rfc3339();
        format!(r#"{{"power_kw": {power}, "soc_pct": 40, "available": true, "timestamp": "{at}"}}"#)
            .into_bytes()
    }

    const TOPIC: &str = "vpp/park/bess/telemetry";

    #[test]
    fn accepts_a_good_sample_and_then_only_newer_ones() {
        let (mut ing, _clock, metrics) = setup();
        let s = ing.ingest(TOPIC, &payload("12.345", -1)).unwrap();
        assert_eq!(s.resource_id, ResourceId(7));
        assert_eq!(s.telemetry.power_kw, Decimal::new(12345, 3));
        assert_eq!(
            ing.ingest(TOPIC, &payload("1", -1)),
            Err(RejectReason::Stale)
        );
        assert_eq!(
            ing.ingest(TOPIC, &payload("1", -2)),
            Err(RejectReason::Stale)
        );
        assert!(ing.ingest(TOPIC, &payload("2", 0)).is_ok());
        assert_eq!(ing.accepted(), 2);
        let snap = metrics.snapshot();
        assert_eq!(snap.counter(INGESTED_TOTAL, &[("source", "test")]), Some(2));
        assert_eq!(
            snap.counter(REJECTED_TOTAL, &[("source", "test"), ("reason", "stale")]),
            Some(2)
        );
    }

    #[test]
    fn every_bad_kind_is_counted_under_its_reason() {
        let (mut ing, _clock, _m) = setup();
        let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
            ("vpp/park/bess/status", payload("1", 0), RejectReason::Topic),
            (
                "vpp/park/ghost/telemetry",
                payload("1", 0),
                RejectReason::UnknownResource,
            ),
            (TOPIC, b"{oops".to_vec(), RejectReason::Malformed),
            (TOPIC, vec![b' '; 5000], RejectReason::TooLarge),
            (TOPIC, payload("10000000.001", 0), RejectReason::OutOfRange),
            (TOPIC, payload("1", -61), RejectReason::TooOld),
            (TOPIC, payload("1", 6), RejectReason::Future),
        ];
        for (topic, body, reason) in &cases {
            assert_eq!(ing.ingest(topic, body), Err(*reason), "{reason:?}");
        }
        for (_, _, reason) in &cases {
            assert_eq!(ing.rejected(*reason), 1, "{reason:?}");
        }
        assert_eq!(ing.accepted(), 0);
        // Nothing bad moved the resource's clock: a sample at the edge of the window is fine.
        assert!(ing.ingest(TOPIC, &payload("1", -60)).is_ok());
        assert!(ing.ingest(TOPIC, &payload("1", 5)).is_ok());
    }

    #[test]
    fn warnings_are_rate_limited_per_reason() {
        let (mut ing, clock, _m) = setup();
        for _ in 0..100 {
            let _ = ing.ingest(TOPIC, b"bad");
            let _ = ing.ingest("vpp/x/y/telemetry", b"{}");
        }
        assert_eq!(ing.warnings_logged(), 2, "one per reason");
        clock.advance(chrono::Duration::seconds(9));
        let _ = ing.ingest(TOPIC, b"bad");
        assert_eq!(ing.warnings_logged(), 2);
        clock.advance(chrono::Duration::seconds(1));
        let _ = ing.ingest(TOPIC, b"bad");
        assert_eq!(ing.warnings_logged(), 3);
        assert_eq!(ing.rejected(RejectReason::Malformed), 102);
    }

    #[test]
    fn rate_limit_reports_what_it_suppressed() {
        let mut rl = RateLimit::default();
        assert_eq!(rl.permit(0, 10), Some(0));
        assert_eq!(rl.permit(5, 10), None);
        assert_eq!(rl.permit(9, 10), None);
        assert_eq!(rl.permit(10, 10), Some(2));
        assert_eq!(rl.permit(11, 10), None);
    }
}
