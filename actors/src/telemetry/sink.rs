//! Where accepted samples go: [`TelemetrySink`], a non-blocking hand-over of one batch.
//!
//! Implementations here: a bounded tokio channel, a bounded std channel (bench threads), and
//! [`ActorFanOut`], which turns each batch into an actor message (e.g. the daemon's
//! `TelemetryBatch`) and `try_send`s it to every target through [`BoundedSender`]; routed
//! (one member set per target), each target gets only the samples of its own resources.
//!
//! Invariants: `deliver` never blocks and never waits on the receiver; a refusal comes back
//! as [`SinkRefused`] (the ingest counts it as `sink_full`); telemetry is state, so a refused
//! batch is not retried: the next sample of each resource supersedes it.

use super::TelemetrySample;
use crate::mailbox::BoundedSender;
use actix::Message;
use std::collections::HashSet;
use std::sync::mpsc as std_mpsc;
use thiserror::Error;
use tokio::sync::mpsc as tokio_mpsc;
use vpp_engine::ids::ResourceId;

/// A batch (or part of it, for a fan-out) was not taken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("telemetry sink {sink} refused {samples} samples: {reason}")]
pub struct SinkRefused {
    pub sink: String,
    pub samples: usize,
    pub reason: String,
}

/// A bounded, non-blocking consumer of sample batches.
pub trait TelemetrySink: Send + 'static {
    /// Hands `batch` over without blocking, or says why (some of) it was not taken.
    fn deliver(&mut self, batch: Vec<TelemetrySample>) -> Result<(), SinkRefused>;
}

impl TelemetrySink for tokio_mpsc::Sender<Vec<TelemetrySample>> {
    fn deliver(&mut self, batch: Vec<TelemetrySample>) -> Result<(), SinkRefused> {
        self.try_send(batch).map_err(|e| {
            let (reason, batch) = match e {
                tokio_mpsc::error::TrySendError::Full(b) => ("channel full", b),
                tokio_mpsc::error::TrySendError::Closed(b) => ("channel closed", b),
            };
            SinkRefused {
                sink: "tokio channel".to_owned(),
                samples: batch.len(),
                reason: reason.to_owned(),
            }
        })
    }
}

impl TelemetrySink for std_mpsc::SyncSender<Vec<TelemetrySample>> {
    fn deliver(&mut self, batch: Vec<TelemetrySample>) -> Result<(), SinkRefused> {
        self.try_send(batch).map_err(|e| {
            let (reason, batch) = match e {
                std_mpsc::TrySendError::Full(b) => ("channel full", b),
                std_mpsc::TrySendError::Disconnected(b) => ("channel closed", b),
            };
            SinkRefused {
                sink: "std channel".to_owned(),
                samples: batch.len(),
                reason: reason.to_owned(),
            }
        })
    }
}

type MakeMessage<M> = Box<dyn Fn(&[TelemetrySample]) -> M + Send>;

/// Each batch becomes one `M` per target, sent with `try_send` (capacity respected, refusals
/// counted by the [`BoundedSender`]).
pub struct ActorFanOut<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    targets: Vec<BoundedSender<M>>,
    make: MakeMessage<M>,
    /// With [`ActorFanOut::routed`]: the resources of each target, in the targets' order.
    members: Option<Vec<HashSet<ResourceId>>>,
    /// Reused for each target's part of a routed batch.
    scratch: Vec<TelemetrySample>,
}

impl<M> ActorFanOut<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    /// `make` builds the message from a batch; it is called once per target.
    pub fn new(
        targets: Vec<BoundedSender<M>>,
        make: impl Fn(&[TelemetrySample]) -> M + Send + 'static,
    ) -> Self {
        Self {
            targets,
            make: Box::new(make),
            members: None,
            scratch: Vec::new(),
        }
    }

    /// Sends each target only the samples of its own resources (one set per target, in the
    /// targets' order); a target with none in a batch gets no message. Without routing every
    /// target receives, and must scan, every batch of the park.
    pub fn routed(mut self, members: Vec<HashSet<ResourceId>>) -> Self {
        assert_eq!(
            members.len(),
            self.targets.len(),
            "one member set per fan-out target"
        );
        self.members = Some(members);
        self
    }
}

impl<M> TelemetrySink for ActorFanOut<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    fn deliver(&mut self, batch: Vec<TelemetrySample>) -> Result<(), SinkRefused> {
        let Self {
            targets,
            make,
            members,
            scratch,
        } = self;
        let mut refused: Vec<String> = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let message = match members.as_ref().and_then(|m| m.get(i)) {
                Some(own) => {
                    scratch.clear();
                    scratch.extend(
                        batch
                            .iter()
                            .filter(|s| own.contains(&s.resource_id))
                            .cloned(),
                    );
                    if scratch.is_empty() {
                        continue;
                    }
                    make(scratch)
                }
                None => make(&batch),
            };
            if let Err(rejected) = target.try_send(message) {
                refused.push(rejected.reason.to_string());
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        Err(SinkRefused {
            sink: format!("{} of {} actors", refused.len(), targets.len()),
            samples: batch.len(),
            reason: refused.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::ActorName;
    use crate::metrics::Metrics;
    use actix::{Actor, Context, Handler};
    use chrono::Utc;
    use rust_decimal::Decimal;
    use vpp_engine::ids::ResourceId;
    use vpp_engine::resource::Telemetry;

    fn sample(id: u64, received_ns: u64) -> TelemetrySample {
        TelemetrySample {
            resource_id: ResourceId(id),
            telemetry: Telemetry {
                power_kw: Decimal::ONE,
                soc_pct: None,
                available: true,
                at: Utc::now(),
            },
            received_ns,
        }
    }

    #[test]
    fn bounded_channels_refuse_when_full_without_blocking() {
        let (mut tx, mut rx) = tokio_mpsc::channel(1);
        assert!(tx.deliver(vec![sample(1, 0)]).is_ok());
        let err = tx.deliver(vec![sample(1, 1), sample(2, 1)]).unwrap_err();
        assert_eq!((err.samples, err.reason.as_str()), (2, "channel full"));
        assert_eq!(rx.try_recv().unwrap().len(), 1);
        drop(rx);
        let err = tx.deliver(vec![sample(1, 2)]).unwrap_err();
        assert_eq!(err.reason, "channel closed");
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Batch(Vec<u64>, u64);

    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u64>, u64)>>>;
    struct Collector(Seen);
    impl Actor for Collector {
        type Context = Context<Self>;
    }
    impl Handler<Batch> for Collector {
        type Result = ();
        fn handle(&mut self, b: Batch, _: &mut Context<Self>) {
            self.0.lock().unwrap().push((b.0, b.1));
        }
    }

    #[actix::test]
    async fn fan_out_sends_one_message_per_target() {
        let metrics = Metrics::new();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let a = Collector(seen.clone()).start();
        let b = Collector(seen.clone()).start();
        let targets = vec![
            BoundedSender::new(a.recipient(), ActorName::new("a"), 16, &metrics),
            BoundedSender::new(b.clone().recipient(), ActorName::new("b"), 16, &metrics),
        ];
        let mut fan = ActorFanOut::new(targets, |batch: &[TelemetrySample]| {
            let produced = batch.iter().map(|s| s.received_ns).min().unwrap_or(0);
            Batch(batch.iter().map(|s| s.resource_id.0).collect(), produced)
        });
        fan.deliver(vec![sample(1, 5), sample(2, 3)]).unwrap();
        for _ in 0..100 {
            if seen.lock().unwrap().len() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(vec![1, 2], 3), (vec![1, 2], 3)]
        );
    }

    #[actix::test]
    async fn a_routed_fan_out_sends_each_target_only_its_own_resources() {
        let metrics = Metrics::new();
        let seen_a = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_b = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let a = Collector(seen_a.clone()).start();
        let b = Collector(seen_b.clone()).start();
        let targets = vec![
            BoundedSender::new(a.recipient(), ActorName::new("a"), 16, &metrics),
            BoundedSender::new(b.recipient(), ActorName::new("b"), 16, &metrics),
        ];
        let own = |ids: &[u64]| ids.iter().map(|i| ResourceId(*i)).collect::<HashSet<_>>();
        let mut fan = ActorFanOut::new(targets, |batch: &[TelemetrySample]| {
            let produced = batch.iter().map(|s| s.received_ns).min().unwrap_or(0);
            Batch(batch.iter().map(|s| s.resource_id.0).collect(), produced)
        })
        .routed(vec![own(&[1, 3]), own(&[2, 3])]);
        // b has none of this batch: it gets no message at all.
        fan.deliver(vec![sample(1, 7)]).unwrap();
        fan.deliver(vec![sample(1, 5), sample(2, 4), sample(3, 6)])
            .unwrap();
        for _ in 0..100 {
            if seen_a.lock().unwrap().len() == 2 && seen_b.lock().unwrap().len() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(*seen_a.lock().unwrap(), vec![(vec![1], 7), (vec![1, 3], 5)]);
        assert_eq!(*seen_b.lock().unwrap(), vec![(vec![2, 3], 4)]);
    }
}
