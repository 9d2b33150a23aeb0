//! Telemetry ingest bench: the in-process path after an MQTT receive,
//! decode → validate → sink → `AggregationBook`/`AggregationState` apply.
//!
//! - criterion `telemetry/ingest_apply`: one thread, 1,000 payloads per iteration across a park
//!   of 10,000 resources in 10 aggregations (samples/s = elements/s).
//! - pipeline report (printed): ingest thread → bounded std channel → applier thread, paced at
//!   a target rate, with `telemetry_to_capacity` (receipt → capacity updated) percentiles from
//!   the hdrhistogram in `Metrics`. Targets: ≥ 100,000 samples/s, p99 ≤ 5 ms.
//! - actor pipeline report (printed): the daemon's path, ingest thread → `ActorFanOut` →
//!   one supervised Aggregation actor per aggregation (`live::aggregation`, publishing capacity
//!   to risk after each batch), paced at 100k/s; staleness is `telemetry_to_capacity` recorded by
//!   the actors (receipt → capacity published), the worst aggregation's percentiles.
//! - optional end-to-end through the broker (env `VPP_BENCH_MQTT=1`, address from
//!   `VPP_TEST_MQTT_URL`, default 127.0.0.1:1883): samples/s from publish to applied.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, Criterion, Throughput};
use rust_decimal::Decimal;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpp_actors::telemetry::{
    CapacityApplier, IngestConfig, Ingestor, ResourceRegistry, TelemetrySample, TelemetrySink,
    TopicKind,
};
use vpp_actors::{Metrics, Stage};
use vpp_engine::aggregation::{AggregationBook, CapacityParams, ResourceFeed};
use vpp_engine::clock::{Clock, ManualClock, SystemClock};
use vpp_engine::ids::{AggregationId, ResourceId};
use vpp_engine::resource::LifecycleState;
use vpp_engine::Timestamp;

const RESOURCES: u64 = 10_000;
const AGGREGATIONS: u64 = 10;
const BATCH: usize = 1_000;

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn registry(root: &str) -> Arc<ResourceRegistry> {
    let mut r = ResourceRegistry::new(root, RESOURCES as usize).unwrap();
    for i in 0..RESOURCES {
        r.insert(
            &format!("site-{}", i % 20),
            &format!("res-{i}"),
            ResourceId(i),
        )
        .unwrap();
    }
    Arc::new(r)
}

fn book() -> AggregationBook {
    let mut book = AggregationBook::new();
    let params = CapacityParams {
        max_power_kw: Decimal::from(500),
        min_power_kw: Decimal::from(-500),
        energy_capacity_kwh: Some(Decimal::from(1000)),
        soc_min_pct: Some(Decimal::from(10)),
        soc_max_pct: Some(Decimal::from(90)),
    };
    for a in 0..AGGREGATIONS {
        book.add_aggregation(AggregationId(a), format!("vpp-{a}"))
            .unwrap();
    }
    for i in 0..RESOURCES {
        book.upsert_resource(
            ResourceId(i),
            ResourceFeed::new(params, LifecycleState::Active),
        )
        .unwrap();
        book.set_member(
            AggregationId(i % AGGREGATIONS),
            ResourceId(i),
            Decimal::from(50),
        )
        .unwrap();
    }
    book
}

/// `rounds` payloads per resource, round by round, timestamps one second apart.
fn payloads(reg: &ResourceRegistry, rounds: i64, start: Timestamp) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity((RESOURCES as usize) * rounds as usize);
    for round in 0..rounds {
        let ms = (start + chrono::Duration::seconds(round)).timestamp_millis();
        for i in 0..RESOURCES {
            let topic = reg.topic(
                &format!("site-{}", i % 20),
                &format!("res-{i}"),
                TopicKind::Telemetry,
            );
            let power = format!(
                "{}.{:03}",
                (i as i64 * 7 + round * 13) % 900 - 450,
                i % 1000
            );
            let body = format!(
                r#"{{"power_kw": {power}, "soc_pct": {}.5, "available": true, "timestamp": {ms}}}"#,
                (i + round as u64) % 100
            );
            out.push((topic, body.into_bytes()));
        }
    }
    out
}

fn config() -> IngestConfig {
    IngestConfig {
        max_age: chrono::Duration::days(365),
        max_future_skew: chrono::Duration::days(365),
        ..IngestConfig::default()
    }
}

struct Direct {
    ingestor: Ingestor,
    applier: CapacityApplier,
}

fn direct(reg: &Arc<ResourceRegistry>, clock: &Arc<dyn Clock>) -> Direct {
    let metrics = Metrics::new();
    Direct {
        ingestor: Ingestor::new(reg.clone(), clock.clone(), config(), &metrics, "bench"),
        applier: CapacityApplier::new(book(), clock.clone(), &metrics, "bench"),
    }
}

fn bench_ingest_apply(c: &mut Criterion) {
    let reg = registry("vpp");
    let pool = payloads(&reg, 20, t0());
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
    let mut group = c.benchmark_group("telemetry");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("ingest_apply", |b| {
        let mut state = direct(&reg, &clock);
        let mut next = 0usize;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if next + BATCH > pool.len() {
                    state = direct(&reg, &clock);
                    next = 0;
                }
                let start = Instant::now();
                let mut batch = Vec::with_capacity(BATCH);
                for (topic, body) in &pool[next..next + BATCH] {
                    if let Ok(s) = state.ingestor.ingest(topic, body) {
                        batch.push(s);
                    }
                }
                state.applier.apply_batch(batch);
                total += start.elapsed();
                next += BATCH;
            }
            total
        });
    });
    group.finish();
}

/// Ingest thread paced at `rate_per_s` in 1 ms slices → bounded channel → applier thread.
fn pipeline(rate_per_s: usize, seconds: usize) {
    let reg = registry("vpp");
    let now = Utc::now();
    let rounds = (rate_per_s * seconds).div_ceil(RESOURCES as usize) as i64;
    let pool = payloads(&reg, rounds, now - chrono::Duration::seconds(rounds + 1));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let metrics = Metrics::new();
    let mut ingestor = Ingestor::new(reg.clone(), clock.clone(), config(), &metrics, "bench");
    let mut applier = CapacityApplier::new(book(), clock.clone(), &metrics, "pipeline");
    let (mut tx, rx) = mpsc::sync_channel::<Vec<TelemetrySample>>(64);
    let consumer = std::thread::spawn(move || {
        while let Ok(batch) = rx.recv() {
            applier.apply_batch(batch);
        }
        applier.stats()
    });
    let per_slice = (rate_per_s / 1000).max(1);
    let start = Instant::now();
    let mut refused = 0usize;
    for (slice, chunk) in pool.chunks(per_slice).enumerate() {
        let due = start + Duration::from_millis(slice as u64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let batch: Vec<TelemetrySample> = chunk
            .iter()
            .filter_map(|(topic, body)| ingestor.ingest(topic, body).ok())
            .collect();
        if tx.deliver(batch).is_err() {
            refused += 1;
        }
    }
    drop(tx);
    let stats = consumer.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let snap = metrics.snapshot();
    let lat = snap
        .latency(Stage::TelemetryToCapacity, "pipeline")
        .unwrap();
    println!(
        "pipeline @ {rate_per_s}/s target: {} applied in {elapsed:.2} s = {:.0} samples/s, \
         {refused} batches refused; telemetry_to_capacity p50 {:.1} us, p99 {:.1} us, \
         p99.9 {:.1} us, max {:.1} us",
        stats.applied,
        stats.applied as f64 / elapsed,
        lat.p50_us,
        lat.p99_us,
        lat.p999_us,
        lat.max_us
    );
}

/// Unpaced: how fast the two threads go flat out.
fn pipeline_flat_out() {
    let reg = registry("vpp");
    let now = Utc::now();
    let pool = payloads(&reg, 50, now - chrono::Duration::seconds(60));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let metrics = Metrics::new();
    let mut ingestor = Ingestor::new(reg.clone(), clock.clone(), config(), &metrics, "bench");
    let mut applier = CapacityApplier::new(book(), clock.clone(), &metrics, "flat");
    let (tx, rx) = mpsc::sync_channel::<Vec<TelemetrySample>>(64);
    let consumer = std::thread::spawn(move || {
        while let Ok(batch) = rx.recv() {
            applier.apply_batch(batch);
        }
        applier.stats()
    });
    let start = Instant::now();
    for chunk in pool.chunks(512) {
        let batch: Vec<TelemetrySample> = chunk
            .iter()
            .filter_map(|(topic, body)| ingestor.ingest(topic, body).ok())
            .collect();
        // Blocking send here on purpose: this measures capacity, not shedding.
        tx.send(batch).unwrap();
    }
    drop(tx);
    let stats = consumer.join().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let snap = metrics.snapshot();
    let lat = snap.latency(Stage::TelemetryToCapacity, "flat").unwrap();
    println!(
        "pipeline flat out: {} applied in {elapsed:.2} s = {:.0} samples/s; \
         telemetry_to_capacity p99 {:.1} us (includes queueing at saturation)",
        stats.applied,
        stats.applied as f64 / elapsed,
        lat.p99_us
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_ingest_apply
}

/// The daemon's path: paced ingest → `ActorFanOut` → one Aggregation actor per aggregation.
fn pipeline_actors(rate_per_s: usize, seconds: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use vpp_actors::live::aggregation::{AggregationLogic, AggregationWiring};
    use vpp_actors::live::messages::{TelemetryBatch, ToRisk};
    use vpp_actors::telemetry::ActorFanOut;
    use vpp_actors::{BoundedSender, Refused, Runtime, SupervisedActor, SupervisorSpec};

    struct RiskSink;
    impl actix::Actor for RiskSink {
        type Context = actix::Context<Self>;
    }
    impl actix::Handler<ToRisk> for RiskSink {
        type Result = Result<(), Refused>;
        fn handle(&mut self, _: ToRisk, _: &mut actix::Context<Self>) -> Self::Result {
            Ok(())
        }
    }

    let reg = registry("vpp");
    let now = Utc::now();
    let rounds = (rate_per_s * seconds).div_ceil(RESOURCES as usize) as i64;
    let pool = payloads(&reg, rounds, now - chrono::Duration::seconds(rounds + 1));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let rt = Runtime::new(clock.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (senders_tx, senders_rx) = mpsc::channel();
    let system = {
        let (rt, clock, stop) = (rt.clone(), clock.clone(), stop.clone());
        std::thread::spawn(move || {
            actix::System::new().block_on(async move {
                use actix::Actor;
                let risk = BoundedSender::new(
                    RiskSink.start().recipient(),
                    vpp_actors::ActorName::new("risk"),
                    4_096,
                    &rt.metrics,
                );
                let book = book();
                let mut senders = Vec::new();
                for a in 0..AGGREGATIONS {
                    let state = book.aggregation_state(AggregationId(a)).unwrap().clone();
                    let feeds = (0..RESOURCES)
                        .filter(|i| i % AGGREGATIONS == a)
                        .map(|i| (ResourceId(i), book.feed(ResourceId(i)).unwrap().clone()))
                        .collect();
                    let w = AggregationWiring {
                        clock: clock.clone(),
                        metrics: rt.metrics.clone(),
                        risk: risk.clone(),
                        routes: Arc::default(),
                        strategies: Vec::new(),
                    };
                    let handle = SupervisedActor::new(
                        SupervisorSpec::new(format!("aggregation/vpp-{a}"))
                            .mailbox_capacity(256)
                            .snapshot_every(32),
                        rt.clone(),
                        AggregationLogic::new(state, feeds, w),
                        |s: &AggregationLogic| Ok(s.clone()),
                    )
                    .unwrap()
                    .start();
                    senders.push(handle.sender::<TelemetryBatch>());
                }
                senders_tx.send(senders).unwrap();
                while !stop.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
    };
    let senders = senders_rx.recv().unwrap();
    let mut ingestor = Ingestor::new(reg.clone(), clock.clone(), config(), &rt.metrics, "bench");
    let mut sink = ActorFanOut::new(senders, |batch: &[TelemetrySample]| TelemetryBatch {
        samples: batch
            .iter()
            .map(|s| (s.resource_id, s.telemetry.clone()))
            .collect(),
        produced_ns: batch.iter().map(|s| s.received_ns).min().unwrap_or(0),
    })
    .routed(
        (0..AGGREGATIONS)
            .map(|a| {
                (0..RESOURCES)
                    .filter(|i| i % AGGREGATIONS == a)
                    .map(ResourceId)
                    .collect()
            })
            .collect(),
    );
    let per_slice = (rate_per_s / 1000).max(1);
    let start = Instant::now();
    let mut refused = 0usize;
    let mut sent = 0u64;
    for (slice, chunk) in pool.chunks(per_slice).enumerate() {
        let due = start + Duration::from_millis(slice as u64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        let batch: Vec<TelemetrySample> = chunk
            .iter()
            .filter_map(|(topic, body)| ingestor.ingest(topic, body).ok())
            .collect();
        let n = batch.len() as u64;
        match sink.deliver(batch) {
            Ok(()) => sent += n,
            Err(_) => refused += 1,
        }
    }
    let applied = || -> u64 {
        rt.metrics
            .snapshot()
            .counters
            .iter()
            .filter(|c| c.name == vpp_actors::metrics::names::TELEMETRY_SAMPLES_TOTAL)
            .map(|c| c.value)
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied() < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    system.join().unwrap();
    let snap = rt.metrics.snapshot();
    let worst = (0..AGGREGATIONS)
        .filter_map(|a| snap.latency(Stage::TelemetryToCapacity, &format!("vpp-{a}")))
        .max_by(|x, y| x.p99_us.total_cmp(&y.p99_us))
        .unwrap();
    println!(
        "actor pipeline @ {rate_per_s}/s target: {} applied in {elapsed:.2} s = {:.0} samples/s, \
         {refused} batches refused (some actor full); telemetry_to_capacity (worst aggregation) \
         p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
        applied(),
        applied() as f64 / elapsed,
        worst.p50_us,
        worst.p99_us,
        worst.p999_us,
        worst.max_us
    );
}

fn main() {
    benches();
    pipeline(100_000, 2);
    pipeline(200_000, 2);
    pipeline_actors(100_000, 2);
    pipeline_flat_out();
    if std::env::var_os("VPP_BENCH_MQTT").is_some() {
        e2e::run();
    }
    Criterion::default().configure_from_args().final_summary();
}

mod e2e {
    //! Through the broker: a publisher floods QoS 0 telemetry, the ingest applies it.
    use super::*;
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    use vpp_actors::telemetry::{MqttConfig, MqttTelemetry};

    pub fn run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(flood(200_000));
    }

    async fn flood(n: usize) {
        let url = std::env::var("VPP_TEST_MQTT_URL").unwrap_or_else(|_| "127.0.0.1:1883".into());
        let addr = url.trim_start_matches("mqtt://");
        let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "1883"));
        let port: u16 = port.parse().unwrap_or(1883);
        let root = format!("vppbench-{}/vpp", std::process::id());
        let reg = registry(&root);
        let rounds = n.div_ceil(RESOURCES as usize) as i64;
        let pool = payloads(
            &reg,
            rounds,
            Utc::now() - chrono::Duration::seconds(rounds + 1),
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
        let metrics = Metrics::new();
        let ingestor = Ingestor::new(reg.clone(), clock.clone(), config(), &metrics, "mqtt");
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let applier = CapacityApplier::new(book(), clock, &metrics, "e2e").spawn(rx);
        let ingest = MqttTelemetry::spawn(
            MqttConfig::new(
                host,
                port,
                &format!("vppbench-ingest-{}", std::process::id()),
            ),
            ingestor,
            tx,
            &metrics,
        );
        while ingest.status().subscriptions_acked == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (client, mut eventloop) = AsyncClient::new(
            MqttOptions::new(format!("vppbench-pub-{}", std::process::id()), host, port),
            1024,
        );
        let driver = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let start = Instant::now();
        for (topic, body) in pool {
            if client
                .publish(topic, QoS::AtMostOnce, false, body)
                .await
                .is_err()
            {
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let applied = applier.lock().unwrap().stats().applied;
            if applied as usize >= n
                || (applied == last && applied > 0)
                || Instant::now() > deadline
            {
                break;
            }
            last = applied;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let applied = applier.lock().unwrap().stats().applied;
        let snap = metrics.snapshot();
        let lat = snap.latency(Stage::TelemetryToCapacity, "e2e");
        println!(
            "end-to-end via broker: {applied}/{n} applied in {elapsed:.2} s = {:.0} samples/s; \
             receipt→capacity p99 {:.1} us",
            applied as f64 / elapsed,
            lat.map_or(0.0, |l| l.p99_us)
        );
        driver.abort();
        ingest.shutdown(Duration::from_secs(1)).await;
    }
}
