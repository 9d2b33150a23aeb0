//! MQTT telemetry ingestion against a real broker (Mosquitto).
//!
//! Broker address: env `VPP_TEST_MQTT_URL` (`host:port` or `mqtt://host:port`), default
//! `127.0.0.1:1883`. Unreachable broker: these tests fail when env `CI` is set, and are skipped
//! with a message otherwise. Every test uses its own topic root and client ids, so parallel
//! runs (and other users of the broker) do not see each other's messages.
//!
//! Waiting is by deadline (`eventually`): a condition that is not met within 15 s fails the
//! test; nothing asserts on how long anything took.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use rust_decimal::Decimal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use vpp_actors::metrics::names;
use vpp_actors::telemetry::ingest::REJECTED_TOTAL;
use vpp_actors::telemetry::payload::decode_setpoint;
use vpp_actors::telemetry::{
    CapacityApplier, IngestConfig, Ingestor, MqttConfig, MqttTelemetry, RejectReason,
    ResourceRegistry, SetpointError, TelemetrySample, TopicKind,
};
use vpp_actors::Metrics;
use vpp_engine::aggregation::{AggregatedCapacity, AggregationBook, CapacityParams, ResourceFeed};
use vpp_engine::clock::{Clock, SystemClock};
use vpp_engine::ids::{AggregationId, ResourceId};
use vpp_engine::market::DeliveryInterval;
use vpp_engine::resource::LifecycleState;
use vpp_engine::Timestamp;

const DEADLINE: Duration = Duration::from_secs(15);
const VPP: AggregationId = AggregationId(1);
const BESS: ResourceId = ResourceId(10);
const PV: ResourceId = ResourceId(11);
const SITE: &str = "park A";

fn d(s: &str) -> Decimal {
    Decimal::from_str_exact(s).unwrap()
}

/// The broker's (host, port), or None (skip) when it is unreachable outside CI.
async fn broker() -> Option<(String, u16)> {
    let url = std::env::var("VPP_TEST_MQTT_URL").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let addr = url.trim_start_matches("mqtt://").trim_end_matches('/');
    let (host, port) = addr
        .rsplit_once(':')
        .map(|(h, p)| {
            (
                h.to_owned(),
                p.parse::<u16>().expect("VPP_TEST_MQTT_URL port"),
            )
        })
        .unwrap_or((addr.to_owned(), 1883));
    let reachable = tokio::time::timeout(
        Duration::from_secs(3),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if reachable {
        return Some((host, port));
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "MQTT broker {host}:{port} unreachable (VPP_TEST_MQTT_URL); CI needs Mosquitto running"
        );
    }
    eprintln!("skipping: MQTT broker {host}:{port} unreachable (set VPP_TEST_MQTT_URL)");
    None
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "vpptest-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A battery (50 % to the VPP) and a PV plant (100 %), both active.
fn book() -> AggregationBook {
    let mut book = AggregationBook::new();
    let bess = CapacityParams {
        max_power_kw: d("500"),
        min_power_kw: d("-500"),
        energy_capacity_kwh: Some(d("1000")),
        soc_min_pct: Some(d("10")),
        soc_max_pct: Some(d("90")),
    };
    let pv = CapacityParams {
        max_power_kw: d("300"),
        min_power_kw: d("0"),
        energy_capacity_kwh: None,
        soc_min_pct: None,
        soc_max_pct: None,
    };
    for (id, params) in [(BESS, bess), (PV, pv)] {
        book.upsert_resource(id, ResourceFeed::new(params, LifecycleState::Active))
            .unwrap();
    }
    book.add_aggregation(VPP, "vpp-1").unwrap();
    book.set_member(VPP, BESS, d("50")).unwrap();
    book.set_member(VPP, PV, d("100")).unwrap();
    book
}

struct Harness {
    root: String,
    registry: Arc<ResourceRegistry>,
    ingest: MqttTelemetry,
    applier: Arc<Mutex<CapacityApplier>>,
    metrics: Metrics,
    publisher: TestClient,
}

impl Harness {
    /// Ingest connected to `ingest_port` (the broker or a proxy in front of it).
    async fn start(tag: &str, host: &str, broker_port: u16, ingest_port: u16) -> Self {
        let root = format!("{}/vpp", unique(tag));
        let mut registry = ResourceRegistry::new(&root, 16).unwrap();
        registry.insert(SITE, "BESS 1", BESS).unwrap();
        registry.insert(SITE, "PV 1", PV).unwrap();
        let registry = Arc::new(registry);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let metrics = Metrics::new();
        let ingestor = Ingestor::new(
            registry.clone(),
            clock.clone(),
            IngestConfig::default(),
            &metrics,
            "mqtt",
        );
        let (tx, rx) = mpsc::channel::<Vec<TelemetrySample>>(64);
        let applier = CapacityApplier::new(book(), clock, &metrics, "vpp-1").spawn(rx);
        let mut config = MqttConfig::new(host, ingest_port, &unique(&format!("{tag}-ingest")));
        config.backoff_max = Duration::from_millis(500);
        let ingest = MqttTelemetry::spawn(config, ingestor, tx, &metrics);
        let publisher = TestClient::start(host, broker_port, &unique(&format!("{tag}-dev"))).await;
        eventually("ingest subscribed", || {
            ingest.status().subscriptions_acked >= 1
        })
        .await;
        Self {
            root,
            registry,
            ingest,
            applier,
            metrics,
            publisher,
        }
    }

    fn topic(&self, name: &str) -> String {
        self.registry.topic(SITE, name, TopicKind::Telemetry)
    }

    async fn send(&self, name: &str, payload: impl Into<Vec<u8>>) {
        self.publisher.publish(&self.topic(name), payload).await;
    }

    fn capacity(&self) -> AggregatedCapacity {
        self.applier.lock().unwrap().capacity(VPP).unwrap()
    }

    fn applied(&self) -> u64 {
        self.applier.lock().unwrap().stats().applied
    }

    fn rejected(&self, reason: RejectReason) -> u64 {
        self.metrics
            .snapshot()
            .counter(
                REJECTED_TOTAL,
                &[("source", "mqtt"), ("reason", reason.as_str())],
            )
            .unwrap_or(0)
    }

    async fn stop(self) {
        self.ingest.shutdown(Duration::from_secs(2)).await;
        self.publisher.stop();
    }
}

fn telemetry(power_kw: &str, soc: Option<&str>, at: Timestamp) -> String {
    let soc = soc
        .map(|s| format!(r#""soc_pct": {s}, "#))
        .unwrap_or_default();
    format!(
        r#"{{"power_kw": {power_kw}, {soc}"available": true, "timestamp": "{}"}}"#,
        at.to_rfc3339()
    )
}

/// A device-side client: publishes at QoS 1, forwards what it receives.
struct TestClient {
    client: AsyncClient,
    received: tokio::sync::Mutex<mpsc::Receiver<Publish>>,
    subacks: Arc<AtomicU64>,
    task: AbortHandle,
}

impl TestClient {
    async fn start(host: &str, port: u16, id: &str) -> Self {
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::channel(1024);
        let subacks = Arc::new(AtomicU64::new(0));
        let acks = subacks.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.try_send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        acks.fetch_add(1, Ordering::AcqRel);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .abort_handle();
        Self {
            client,
            received: tokio::sync::Mutex::new(rx),
            subacks,
            task,
        }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn subscribe(&self, filter: &str) {
        let before = self.subacks.load(Ordering::Acquire);
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        eventually("test subscription acknowledged", || {
            self.subacks.load(Ordering::Acquire) > before
        })
        .await;
    }

    async fn next(&self) -> Publish {
        tokio::time::timeout(DEADLINE, self.received.lock().await.recv())
            .await
            .expect("timed out waiting for a message")
            .expect("test client stopped")
    }

    fn stop(&self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_moves_aggregated_capacity_to_exact_values() {
    let Some((host, port)) = broker().await else {
        return;
    };
    let h = Harness::start("cap", &host, port, port).await;
    let now = chrono::Utc::now();
    h.send("BESS 1", telemetry("120.5", Some("55.25"), now))
        .await;
    h.send("PV 1", telemetry("\"200.125\"", None, now)).await;
    eventually("two samples applied", || h.applied() == 2).await;
    // BESS at 50 %: up (500-120.5)/2, down (120.5+500)/2, energy (55.25-10)% of 1000 /2,
    // headroom (90-55.25)% of 1000 /2. PV at 100 %: up 300-200.125, down 200.125.
    let cap = h.capacity();
    assert_eq!(cap.up_flex_kw, d("189.75") + d("99.875"));
    assert_eq!(cap.down_flex_kw, d("310.25") + d("200.125"));
    assert_eq!(cap.energy_kwh, d("226.25"));
    assert_eq!(cap.charge_headroom_kwh, d("173.75"));
    assert_eq!(cap.available_resources, 2);

    // A newer sample replaces the BESS contribution (epoch-millisecond timestamp this time).
    let later = (now + chrono::Duration::milliseconds(500)).timestamp_millis();
    let body =
        format!(r#"{{"power_kw": -100, "soc_pct": 20, "available": true, "timestamp": {later}}}"#);
    h.send("BESS 1", body).await;
    eventually("third sample applied", || h.applied() == 3).await;
    let cap = h.capacity();
    assert_eq!(cap.up_flex_kw, d("300") + d("99.875"));
    assert_eq!(cap.down_flex_kw, d("200") + d("200.125"));
    assert_eq!(cap.energy_kwh, d("50"));
    let snap = h.metrics.snapshot();
    let latency = snap
        .latency(vpp_actors::Stage::TelemetryToCapacity, "vpp-1")
        .expect("telemetry_to_capacity recorded");
    assert_eq!(latency.count, 3);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_counted_and_ingest_goes_on() {
    let Some((host, port)) = broker().await else {
        return;
    };
    let h = Harness::start("bad", &host, port, port).await;
    let now = chrono::Utc::now();
    h.send("BESS 1", telemetry("10", Some("50"), now)).await;
    eventually("first sample applied", || h.applied() == 1).await;

    h.send("BESS 1", "{not json").await;
    h.send(
        "BESS 1",
        telemetry("11", Some("50"), now - chrono::Duration::seconds(1)),
    )
    .await;
    h.send(
        "BESS 1",
        telemetry("12", Some("50"), now - chrono::Duration::hours(1)),
    )
    .await;
    h.send(
        "BESS 1",
        telemetry("13", Some("150"), now + chrono::Duration::seconds(1)),
    )
    .await;
    h.send("BESS 1", vec![b' '; 10_000]).await;
    h.send("Ghost 9", telemetry("14", None, now)).await;
    let expected = [
        RejectReason::Malformed,
        RejectReason::Stale,
        RejectReason::TooOld,
        RejectReason::OutOfRange,
        RejectReason::TooLarge,
        RejectReason::UnknownResource,
    ];
    eventually("every bad payload counted", || {
        expected.iter().all(|r| h.rejected(*r) == 1)
    })
    .await;

    h.send(
        "BESS 1",
        telemetry("42.5", Some("50"), now + chrono::Duration::seconds(2)),
    )
    .await;
    eventually("good sample after the bad ones applied", || {
        h.applied() == 2
    })
    .await;
    assert_eq!(
        h.capacity().up_flex_kw,
        d("228.75"),
        "(500 - 42.5) x 50 %; PV never reported"
    );
    assert!(h.ingest.status().connected);
    assert_eq!(
        h.ingest.status().connects,
        1,
        "bad payloads never cost the connection"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setpoints_arrive_on_the_setpoint_topic() {
    let Some((host, port)) = broker().await else {
        return;
    };
    let h = Harness::start("sp", &host, port, port).await;
    let device = TestClient::start(&host, port, &unique("sp-device")).await;
    device.subscribe(&format!("{}/+/+/setpoint", h.root)).await;

    let interval = DeliveryInterval::containing(chrono::Utc::now());
    let at = chrono::Utc::now();
    let setpoints = h.ingest.setpoints();
    setpoints
        .publish(BESS, d("-250.125"), Some(interval), at)
        .unwrap();
    let msg = device.next().await;
    assert_eq!(msg.topic, h.registry.setpoint_topic(BESS).unwrap());
    assert_eq!(msg.qos, QoS::AtLeastOnce);
    let sp = decode_setpoint(&msg.payload, 1024).unwrap();
    assert_eq!(sp.setpoint_kw, d("-250.125"));
    assert_eq!(sp.interval, Some(interval));
    assert_eq!(sp.at.timestamp_millis(), at.timestamp_millis());

    assert_eq!(
        setpoints.publish(ResourceId(999), d("1"), None, at),
        Err(SetpointError::UnknownResource(ResourceId(999)))
    );
    device.stop();
    h.stop().await;
}

/// A TCP proxy whose live connections can be cut (the listener stays up).
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Proxy {
    async fn start(host: &str, broker_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let list = conns.clone();
        let upstream = (host.to_owned(), broker_port);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(conn.abort_handle());
            }
        })
        .abort_handle();
        Self {
            port,
            conns,
            accept,
        }
    }

    /// Drops every live connection (both sockets close).
    fn cut(&self) -> usize {
        let conns: Vec<AbortHandle> = self.conns.lock().unwrap().drain(..).collect();
        conns.iter().for_each(AbortHandle::abort);
        conns.len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_restores_the_subscription_after_a_drop() {
    let Some((host, port)) = broker().await else {
        return;
    };
    let proxy = Proxy::start(&host, port).await;
    let h = Harness::start("reconnect", &host, port, proxy.port).await;
    let now = chrono::Utc::now();
    h.send("PV 1", telemetry("100", None, now)).await;
    eventually("sample before the drop applied", || h.applied() == 1).await;
    assert_eq!(h.capacity().up_flex_kw, d("200"));

    assert_eq!(proxy.cut(), 1, "the ingest's one connection was cut");
    eventually("reconnected and resubscribed", || {
        let s = h.ingest.status();
        s.connects >= 2 && s.subscriptions_acked >= 2 && s.connected
    })
    .await;
    assert!(h.ingest.status().connection_errors >= 1);
    let reconnects = h
        .metrics
        .snapshot()
        .counters
        .iter()
        .filter(|c| c.name == names::RECONNECTS_TOTAL)
        .map(|c| c.value)
        .sum::<u64>();
    assert!(reconnects >= 1);

    // Clean session: only a re-sent SUBSCRIBE makes this sample reach the ingest.
    h.send(
        "PV 1",
        telemetry("250", None, now + chrono::Duration::seconds(1)),
    )
    .await;
    eventually("sample after the reconnect applied", || h.applied() == 2).await;
    assert_eq!(h.capacity().up_flex_kw, d("50"));
    proxy.accept.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sink_is_counted_and_never_stalls_ingest() {
    let Some((host, port)) = broker().await else {
        return;
    };
    let root = format!("{}/vpp", unique("full"));
    let mut registry = ResourceRegistry::new(&root, 4).unwrap();
    registry.insert(SITE, "PV 1", PV).unwrap();
    let registry = Arc::new(registry);
    let metrics = Metrics::new();
    let ingestor = Ingestor::new(
        registry.clone(),
        Arc::new(SystemClock::new()),
        IngestConfig::default(),
        &metrics,
        "mqtt",
    );
    // A sink that is already full: every delivery is refused until the filler is taken.
    let (tx, mut rx) = mpsc::channel::<Vec<TelemetrySample>>(1);
    tx.try_send(Vec::new()).unwrap();
    let config = MqttConfig::new(&host, port, &unique("full-ingest"));
    let ingest = MqttTelemetry::spawn(config, ingestor, tx, &metrics);
    let device = TestClient::start(&host, port, &unique("full-dev")).await;
    eventually("ingest subscribed", || {
        ingest.status().subscriptions_acked >= 1
    })
    .await;
    let topic = registry.topic(SITE, "PV 1", TopicKind::Telemetry);
    let now = chrono::Utc::now();
    for i in 0..5 {
        let at = now + chrono::Duration::milliseconds(i);
        device.publish(&topic, telemetry("1", None, at)).await;
    }
    let counter = |reason: &str| {
        metrics
            .snapshot()
            .counter(REJECTED_TOTAL, &[("source", "mqtt"), ("reason", reason)])
            .unwrap_or(0)
    };
    eventually("five refused by the full sink", || {
        counter("sink_full") == 5
    })
    .await;
    assert!(ingest.status().batches_refused >= 1);

    assert_eq!(rx.recv().await, Some(Vec::new()), "the filler");
    device
        .publish(
            &topic,
            telemetry("2", None, now + chrono::Duration::seconds(1)),
        )
        .await;
    let batch = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("ingest still delivers after refusals")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].telemetry.power_kw, d("2"));
    assert_eq!(ingest.status().connects, 1);
    device.stop();
    ingest.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_retried_and_setpoints_are_refused_meanwhile() {
    // A port nobody listens on: bind, note it, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let mut registry = ResourceRegistry::new("vpp", 4).unwrap();
    registry.insert(SITE, "PV 1", PV).unwrap();
    let metrics = Metrics::new();
    let ingestor = Ingestor::new(
        Arc::new(registry),
        Arc::new(SystemClock::new()),
        IngestConfig::default(),
        &metrics,
        "mqtt",
    );
    let (tx, _rx) = mpsc::channel::<Vec<TelemetrySample>>(4);
    let mut config = MqttConfig::new("127.0.0.1", port, &unique("down"));
    config.backoff_initial = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(20);
    let ingest = MqttTelemetry::spawn(config, ingestor, tx, &metrics);
    eventually("several failed connection attempts", || {
        ingest.status().connection_errors >= 3
    })
    .await;
    let status = ingest.status();
    assert!(!status.connected);
    assert_eq!(status.connects, 0);
    assert_eq!(
        ingest
            .setpoints()
            .publish(PV, d("5"), None, chrono::Utc::now()),
        Err(SetpointError::NotConnected(PV))
    );
    let refused = metrics
        .snapshot()
        .counters
        .iter()
        .filter(|c| {
            c.name == vpp_actors::telemetry::mqtt::SETPOINTS_TOTAL
                && c.labels
                    .iter()
                    .any(|(k, v)| k == "result" && v == "refused")
        })
        .map(|c| c.value)
        .sum::<u64>();
    assert_eq!(refused, 1);
    ingest.shutdown(Duration::from_secs(1)).await;
}
