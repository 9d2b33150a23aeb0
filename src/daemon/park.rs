//! Where the daemon's telemetry comes from and where its setpoints go (`[telemetry] source`):
//! - `sim` (default): the simulated park, `ParkSim` stepped once per simulated second (at most
//!   every 50 ms of real time, so high speeds step in larger slices), telemetry sent to the
//!   aggregation and dispatch actors, setpoints from dispatch applied;
//! - `mqtt`: [`start_mqtt`] subscribes to `vpp/<site>/<resource>/telemetry` on the broker,
//!   validates each sample (unknown resource, malformed, stale: counted and logged, never
//!   fatal) and fans the accepted batches out to the same actors; setpoints from dispatch are
//!   published to `vpp/<site>/<resource>/setpoint` (QoS 1). The client reconnects by itself.
//!
//! Either way the hand-over to the actors is a bounded `try_send`: telemetry is state, so a
//! refused batch is superseded by the next one (counted).

use crate::config::{Park, TelemetrySettings};
use anyhow::Context;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::live::dispatch::Setpoint;
use vpp_actors::live::messages::TelemetryBatch;
use vpp_actors::metrics::Metrics;
use vpp_actors::telemetry::ingest::RateLimit;
use vpp_actors::telemetry::registry::{ResourceRegistry, DEFAULT_ROOT, MAX_REGISTRY_RESOURCES};
use vpp_actors::telemetry::{
    ActorFanOut, IngestConfig, Ingestor, MqttConfig, MqttTelemetry, TelemetrySample,
};
use vpp_actors::BoundedSender;
use vpp_engine::clock::Clock;
use vpp_engine::ids::ResourceId;
use vpp_engine::park_sim::{ParkSim, SimResource, MAX_STEP_S};

pub fn build(park: &Park, seed: u64) -> anyhow::Result<ParkSim> {
    let mut resources = Vec::with_capacity(park.resources.len());
    for r in &park.resources {
        let t = park
            .templates
            .version(r.template_id, r.template_version)
            .with_context(|| format!("resource {}: template version", r.name))?;
        resources.push(SimResource {
            id: r.id,
            kind: t.kind.clone(),
            params: t.params.clone(),
            location: r.location,
        });
    }
    ParkSim::new(resources, seed).map_err(|e| anyhow::anyhow!("simulated park: {e}"))
}

pub async fn run(
    mut sim: ParkSim,
    clock: Arc<dyn Clock>,
    out: Vec<BoundedSender<TelemetryBatch>>,
    mut setpoints: mpsc::Receiver<Setpoint>,
) {
    let mut last = clock.now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = Vec::with_capacity(sim.len());
    loop {
        tokio::select! {
            sp = setpoints.recv() => match sp {
                Some(sp) if sp.released => {
                    // No aggregation moves it: it runs on its own (a battery rests).
                    if let Err(e) = sim.clear_setpoint(sp.resource_id) {
                        tracing::warn!(error = %e, "setpoint release refused by the park");
                    }
                }
                Some(sp) => {
                    if let Err(e) = sim.set_setpoint(sp.resource_id, sp.setpoint_kw) {
                        tracing::warn!(error = %e, "setpoint refused by the park");
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                let now = clock.now();
                let dt_s = (now - last).num_milliseconds() as f64 / 1000.0;
                if dt_s < 1.0 {
                    continue;
                }
                last = now;
                if let Err(e) = sim.step_into(now, dt_s.min(MAX_STEP_S), &mut buf) {
                    tracing::warn!(error = %e, "park step failed");
                    continue;
                }
                let produced_ns = clock.monotonic_ns();
                for tx in &out {
                    let batch = TelemetryBatch { samples: buf.clone(), produced_ns };
                    // Telemetry is state: a refused batch is superseded by the next (counted).
                    let _ = tx.try_send(batch);
                }
            }
        }
    }
}

/// The topic registry of the park: each resource under its own site, or under
/// `[telemetry] site` when set.
pub fn registry(park: &Park, settings: &TelemetrySettings) -> anyhow::Result<ResourceRegistry> {
    let mut registry = ResourceRegistry::new(DEFAULT_ROOT, MAX_REGISTRY_RESOURCES)
        .map_err(|e| anyhow::anyhow!("telemetry: {e}"))?;
    for r in &park.resources {
        let site = settings.site.as_deref().unwrap_or(&r.site);
        registry
            .insert(site, &r.name, r.id)
            .map_err(|e| anyhow::anyhow!("telemetry: resource {}: {e}", r.name))?;
    }
    Ok(registry)
}

/// Starts MQTT ingestion into the actors behind `out` and the setpoint publisher fed by
/// `setpoints`. The returned client is shut down by the caller.
#[allow(clippy::too_many_arguments)]
pub fn start_mqtt(
    park: &Park,
    settings: &TelemetrySettings,
    (host, port): (&str, u16),
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
    out: Vec<BoundedSender<TelemetryBatch>>,
    out_members: Vec<HashSet<ResourceId>>,
    mut setpoints: mpsc::Receiver<Setpoint>,
) -> anyhow::Result<MqttTelemetry> {
    let registry = Arc::new(registry(park, settings)?);
    let config = IngestConfig {
        max_age: chrono::Duration::seconds(i64::from(settings.max_age_s)),
        ..IngestConfig::default()
    };
    let ingestor = Ingestor::new(registry, Arc::clone(&clock), config, metrics, "mqtt");
    let sink = ActorFanOut::new(out, |batch: &[TelemetrySample]| TelemetryBatch {
        samples: batch
            .iter()
            .map(|s| (s.resource_id, s.telemetry.clone()))
            .collect(),
        produced_ns: batch.iter().map(|s| s.received_ns).min().unwrap_or(0),
    })
    .routed(out_members);
    let mqtt = MqttTelemetry::spawn(
        MqttConfig::new(host, port, &settings.client_id),
        ingestor,
        sink,
        metrics,
    );
    let publisher = mqtt.setpoints();
    tracing::info!(broker = %format!("{host}:{port}"), client_id = %settings.client_id,
        resources = park.resources.len(), "telemetry from MQTT");
    actix::spawn(async move {
        let mut log = RateLimit::default();
        while let Some(sp) = setpoints.recv().await {
            let at = clock.now();
            if let Err(e) = publisher.publish(sp.resource_id, sp.setpoint_kw, sp.interval, at) {
                // Counted by the publisher; the next dispatch supersedes it.
                if let Some(suppressed) = log.permit(clock.monotonic_ns(), 10_000_000_000) {
                    tracing::warn!(error = %e, suppressed, "setpoint not published");
                }
            }
        }
    });
    Ok(mqtt)
}
