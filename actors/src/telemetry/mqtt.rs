//! The MQTT side: one tokio task owns the rumqttc [`EventLoop`], feeds received publishes to
//! the [`Ingestor`] and accepted samples, in batches, to a [`TelemetrySink`]; a cloneable
//! [`SetpointPublisher`] sends setpoints at QoS 1.
//!
//! Connection handling:
//! - Clean session: the broker forgets subscriptions on every disconnect, so the telemetry
//!   filter is (re)subscribed on *every* ConnAck; a subscribe the bounded request channel
//!   cannot take right now is retried on each loop turn until it is queued.
//! - `EventLoop::poll` reconnects by itself when polled again after an error; between failed
//!   polls the task sleeps with exponential backoff (`backoff_initial` doubling up to
//!   `backoff_max`, reset by a ConnAck) so a dead broker is not hammered.
//!
//! Batching: samples accumulate while the event loop has more messages ready and are handed
//! to the sink as soon as it has none (or at `max_batch`), so a batch never waits for the
//! network. The pending poll future is kept alive across the flush (never cancelled).
//!
//! Bounds: `max_packet_bytes` on incoming packets (rumqttc drops the connection above it:
//! keep it well above `ingest.max_payload_bytes`, which rejects and counts instead), the
//! request channel (`request_channel_capacity`), `max_batch`.
//!
//! Setpoints are refused (not queued) while disconnected; QoS 1 publishes in flight when the
//! connection drops are discarded by the clean session, and the dispatcher's next setpoint
//! supersedes them.

use super::ingest::{Ingestor, RateLimit, RejectReason};
use super::payload::{encode_setpoint, SetpointPayload};
use super::registry::ResourceRegistry;
use super::sink::TelemetrySink;
use super::TelemetrySample;
use crate::metrics::{names, Counter, Metrics};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::task::JoinHandle;
use vpp_engine::ids::ResourceId;
use vpp_engine::market::DeliveryInterval;
use vpp_engine::Timestamp;

/// Counter of setpoints handed to the client (label `result`: `queued`, `refused`).
pub const SETPOINTS_TOTAL: &str = "vpp_mqtt_setpoints_total";

/// Broker address, identity and limits.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Unique per daemon (and per test): the broker drops an older session with the same id.
    pub client_id: String,
    pub keep_alive: Duration,
    /// Bound of rumqttc's request channel (subscribes, setpoint publishes, acks).
    pub request_channel_capacity: usize,
    /// Largest incoming MQTT packet; above it rumqttc drops the connection.
    pub max_packet_bytes: usize,
    pub telemetry_qos: QoS,
    /// Most samples per sink delivery.
    pub max_batch: usize,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl MqttConfig {
    pub fn new(host: &str, port: u16, client_id: &str) -> Self {
        Self {
            host: host.to_owned(),
            port,
            client_id: client_id.to_owned(),
            keep_alive: Duration::from_secs(5),
            request_channel_capacity: 256,
            max_packet_bytes: 256 * 1024,
            telemetry_qos: QoS::AtMostOnce,
            max_batch: 512,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }

    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        o
    }
}

#[derive(Default)]
struct StatusInner {
    connected: AtomicBool,
    connects: AtomicU64,
    subscriptions_acked: AtomicU64,
    connection_errors: AtomicU64,
    batches_refused: AtomicU64,
}

/// A copy of the connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttStatus {
    pub connected: bool,
    /// ConnAcks received (1 + reconnects).
    pub connects: u64,
    /// Successful SubAcks of the telemetry filter (one per connection when all is well).
    pub subscriptions_acked: u64,
    pub connection_errors: u64,
    pub batches_refused: u64,
}

/// Why a setpoint was not queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetpointError {
    #[error("resource {0} has no setpoint topic: it is not in the telemetry registry")]
    UnknownResource(ResourceId),
    #[error("not connected to the MQTT broker; setpoint for resource {0} not sent")]
    NotConnected(ResourceId),
    #[error(
        "MQTT request queue full or closed; setpoint for resource {resource_id} not sent: {reason}"
    )]
    QueueFull {
        resource_id: ResourceId,
        reason: String,
    },
}

/// Publishes setpoints to `<root>/<site>/<resource>/setpoint` at QoS 1. Cheap to clone.
#[derive(Clone)]
pub struct SetpointPublisher {
    client: AsyncClient,
    registry: Arc<ResourceRegistry>,
    status: Arc<StatusInner>,
    queued: Counter,
    refused: Counter,
}

impl SetpointPublisher {
    /// Queues one setpoint without blocking, or says why not (counted either way).
    pub fn publish(
        &self,
        resource_id: ResourceId,
        setpoint_kw: Decimal,
        interval: Option<DeliveryInterval>,
        at: Timestamp,
    ) -> Result<(), SetpointError> {
        let result = self.try_publish(resource_id, setpoint_kw, interval, at);
        match &result {
            Ok(()) => self.queued.inc(),
            Err(_) => self.refused.inc(),
        }
        result
    }

    fn try_publish(
        &self,
        resource_id: ResourceId,
        setpoint_kw: Decimal,
        interval: Option<DeliveryInterval>,
        at: Timestamp,
    ) -> Result<(), SetpointError> {
        let topic = self
            .registry
            .setpoint_topic(resource_id)
            .ok_or(SetpointError::UnknownResource(resource_id))?;
        if !self.status.connected.load(Ordering::Acquire) {
            return Err(SetpointError::NotConnected(resource_id));
        }
        let payload = encode_setpoint(&SetpointPayload {
            setpoint_kw,
            interval,
            at,
        });
        self.client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
            .map_err(|e| SetpointError::QueueFull {
                resource_id,
                reason: e.to_string(),
            })
    }
}

/// A running MQTT telemetry ingest.
pub struct MqttTelemetry {
    client: AsyncClient,
    publisher: SetpointPublisher,
    status: Arc<StatusInner>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl MqttTelemetry {
    /// Starts the event loop task on the current tokio (or actix) runtime.
    pub fn spawn(
        config: MqttConfig,
        ingestor: Ingestor,
        sink: impl TelemetrySink,
        metrics: &Metrics,
    ) -> Self {
        let (client, eventloop) =
            AsyncClient::new(config.options(), config.request_channel_capacity.max(1));
        let status = Arc::new(StatusInner::default());
        let stop = Arc::new(AtomicBool::new(false));
        let connection = format!("mqtt/{}", config.client_id);
        let publisher = SetpointPublisher {
            client: client.clone(),
            registry: ingestor.registry().clone(),
            status: status.clone(),
            queued: metrics.counter(
                SETPOINTS_TOTAL,
                &[("connection", &connection), ("result", "queued")],
            ),
            refused: metrics.counter(
                SETPOINTS_TOTAL,
                &[("connection", &connection), ("result", "refused")],
            ),
        };
        let worker = Worker {
            filter: ingestor.registry().telemetry_filter(),
            client: client.clone(),
            ingestor,
            sink,
            batch: Vec::with_capacity(config.max_batch.max(1)),
            status: status.clone(),
            stop: stop.clone(),
            reconnects: metrics.counter(names::RECONNECTS_TOTAL, &[("connection", &connection)]),
            error_log: RateLimit::default(),
            origin: Instant::now(),
            subscribe_due: false,
            config,
        };
        let task = tokio::spawn(worker.run(eventloop));
        Self {
            client,
            publisher,
            status,
            stop,
            task,
        }
    }

    pub fn setpoints(&self) -> SetpointPublisher {
        self.publisher.clone()
    }

    pub fn status(&self) -> MqttStatus {
        let s = &self.status;
        MqttStatus {
            connected: s.connected.load(Ordering::Acquire),
            connects: s.connects.load(Ordering::Acquire),
            subscriptions_acked: s.subscriptions_acked.load(Ordering::Acquire),
            connection_errors: s.connection_errors.load(Ordering::Acquire),
            batches_refused: s.batches_refused.load(Ordering::Acquire),
        }
    }

    /// Sends DISCONNECT (best effort) and stops the task within `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.stop.store(true, Ordering::Release);
        let _ = self.client.try_disconnect();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(grace, self.task).await.is_err() {
            abort.abort();
        }
    }
}

struct Worker<S> {
    config: MqttConfig,
    filter: String,
    client: AsyncClient,
    ingestor: Ingestor,
    sink: S,
    batch: Vec<TelemetrySample>,
    status: Arc<StatusInner>,
    stop: Arc<AtomicBool>,
    reconnects: Counter,
    error_log: RateLimit,
    origin: Instant,
    subscribe_due: bool,
}

impl<S: TelemetrySink> Worker<S> {
    async fn run(mut self, mut eventloop: EventLoop) {
        let mut backoff = self.config.backoff_initial;
        loop {
            let event = self.next_event(&mut eventloop).await;
            if self.stop.load(Ordering::Acquire) {
                self.flush();
                return;
            }
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => self.on_publish(&p.topic, &p.payload),
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = self.config.backoff_initial;
                    self.on_connack();
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => self.on_suback(&ack.return_codes),
                Ok(_) => {}
                Err(e) => {
                    self.on_error(&e, backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
            if self.subscribe_due {
                self.subscribe();
            }
        }
    }

    /// The next event; if samples are waiting and the loop has nothing ready, flush them
    /// first, keeping the same poll future alive (no cancellation of rumqttc's state).
    async fn next_event(&mut self, eventloop: &mut EventLoop) -> Result<Event, ConnectionError> {
        let poll = eventloop.poll();
        tokio::pin!(poll);
        if self.batch.is_empty() {
            return poll.await;
        }
        tokio::select! {
            biased;
            event = &mut poll => event,
            () = std::future::ready(()) => {
                self.flush();
                poll.await
            }
        }
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if let Ok(sample) = self.ingestor.ingest(topic, payload) {
            self.batch.push(sample);
            if self.batch.len() >= self.config.max_batch {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.config.max_batch));
        let samples = batch.len();
        if let Err(refused) = self.sink.deliver(batch) {
            self.status.batches_refused.fetch_add(1, Ordering::AcqRel);
            let n = u64::try_from(samples).unwrap_or(u64::MAX);
            self.ingestor
                .reject_n(RejectReason::SinkFull, n, "", &refused);
        }
    }

    fn on_connack(&mut self) {
        self.status.connected.store(true, Ordering::Release);
        let connects = self.status.connects.fetch_add(1, Ordering::AcqRel) + 1;
        if connects > 1 {
            self.reconnects.inc();
        }
        tracing::info!(client_id = %self.config.client_id, connects, "MQTT connected; subscribing to {}", self.filter);
        self.subscribe_due = true;
    }

    fn subscribe(&mut self) {
        match self
            .client
            .try_subscribe(self.filter.clone(), self.config.telemetry_qos)
        {
            Ok(()) => self.subscribe_due = false,
            Err(e) => tracing::debug!(error = %e, "subscribe not queued yet; retrying"),
        }
    }

    fn on_suback(&mut self, codes: &[SubscribeReasonCode]) {
        if codes
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
        {
            self.status
                .subscriptions_acked
                .fetch_add(1, Ordering::AcqRel);
        } else {
            tracing::error!(filter = %self.filter, ?codes, "broker refused the telemetry subscription");
        }
    }

    fn on_error(&mut self, e: &ConnectionError, backoff: Duration) {
        self.flush();
        self.status.connected.store(false, Ordering::Release);
        self.status.connection_errors.fetch_add(1, Ordering::AcqRel);
        let now_ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(suppressed) = self.error_log.permit(now_ns, 10_000_000_000) {
            tracing::warn!(
                client_id = %self.config.client_id,
                error = %e,
                suppressed,
                backoff_ms = backoff.as_millis() as u64,
                "MQTT connection lost or refused; reconnecting"
            );
        }
    }
}
