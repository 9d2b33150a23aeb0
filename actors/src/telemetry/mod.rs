//! Telemetry ingestion over MQTT: topics `<root>/<site>/<resource>/telemetry` (root `vpp` by
//! default) in, validated [`TelemetrySample`]s out to a bounded [`TelemetrySink`]; setpoints
//! out on `<root>/<site>/<resource>/setpoint` (QoS 1).
//!
//! Pipeline (one tokio task owns the rumqttc event loop):
//! ```text
//! broker ─publish─▶ EventLoop::poll ─(topic, bytes)─▶ Ingestor::ingest ─TelemetrySample─▶ batch
//!        ─▶ TelemetrySink::deliver (try_send, never blocks) ─▶ Aggregation actors / CapacityApplier
//! ```
//! - [`registry`]: (site, resource name) → [`ResourceId`] and back, bounded.
//! - [`payload`]: the JSON payloads, decimals parsed exactly from their text.
//! - [`ingest`]: decode, validate, staleness and age checks, per-reason rejection counters and
//!   rate-limited warnings. Pure and synchronous: the bench and the tests drive it directly.
//! - [`sink`]: where accepted samples go (a trait; tokio channel and actor fan-out adapters).
//! - [`mqtt`]: the rumqttc client: subscribe on every ConnAck (clean session), backoff between
//!   failed polls, setpoint publisher.
//! - [`apply`]: a small consumer applying samples to an engine `AggregationBook` and recording
//!   `telemetry_to_capacity` (tests, bench; the daemon uses its Aggregation actors instead).
//!
//! Wiring in the daemon (the Aggregation actors take `TelemetryBatch`; give the ingestor the
//! same clock they use, so `produced_ns` and their `telemetry_to_capacity` agree):
//! ```text
//! let registry = Arc::new(ResourceRegistry::from_resources("vpp", park.resources.iter())?);
//! let ingestor = Ingestor::new(registry, clock.clone(), IngestConfig::default(), &metrics, "mqtt");
//! let sink = ActorFanOut::new(telemetry_senders, |batch: &[TelemetrySample]| TelemetryBatch {
//!     samples: batch.iter().map(|s| (s.resource_id, s.telemetry.clone())).collect(),
//!     produced_ns: batch.iter().map(|s| s.received_ns).min().unwrap_or(0),
//! });
//! let mqtt = MqttTelemetry::spawn(MqttConfig::new("127.0.0.1", 1883, "vpp-1"), ingestor, sink, &metrics);
//! let setpoints = mqtt.setpoints(); // setpoints.publish(id, kw, Some(interval), clock.now())
//! ```
//!
//! Invariants: a bad payload is counted and dropped, never panics and never blocks ingest;
//! everything fed from outside is bounded (payload bytes, registry size, request channel,
//! batch size); decimals never pass through `f64`.

pub mod apply;
pub mod ingest;
pub mod mqtt;
pub mod payload;
pub mod registry;
pub mod sink;

pub use apply::CapacityApplier;
pub use ingest::{IngestConfig, Ingestor, RejectReason};
pub use mqtt::{MqttConfig, MqttStatus, MqttTelemetry, SetpointError, SetpointPublisher};
pub use payload::{decode_telemetry, encode_setpoint, PayloadError, SetpointPayload};
pub use registry::{RegistryError, ResourceRegistry, TopicKind};
pub use sink::{ActorFanOut, SinkRefused, TelemetrySink};

use vpp_engine::ids::ResourceId;
use vpp_engine::resource::Telemetry;

/// One accepted sample, ready for aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetrySample {
    pub resource_id: ResourceId,
    pub telemetry: Telemetry,
    /// `Clock::monotonic_ns` when the payload was received (start of telemetry-to-capacity).
    pub received_ns: u64,
}
