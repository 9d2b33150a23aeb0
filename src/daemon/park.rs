//! The simulated park as the daemon runs it: `ParkSim` stepped once per simulated second (at
//! most every 50 ms of real time, so high speeds step in larger slices), telemetry sent to the
//! aggregation and dispatch actors, setpoints from dispatch applied.

use crate::config::Park;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use vpp_actors::live::dispatch::Setpoint;
use vpp_actors::live::messages::TelemetryBatch;
use vpp_actors::BoundedSender;
use vpp_engine::clock::Clock;
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
                Some((id, kw)) => {
                    if let Err(e) = sim.set_setpoint(id, kw) {
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
