//! Cost per message of the two market-data/order paths of the runtime, on one arbiter:
//! - `bounded_try_send_handle`: `BoundedSender::try_send` into a bounded mailbox (capacity
//!   1024) plus the handler, yielding to the actor whenever the mailbox is full;
//! - `supervised_try_send_handle`: the same through `SupervisedActor` (catch_unwind at the
//!   handler boundary, snapshot every 64 messages);
//! - `conflator_publish_drain`: `ConflatedSender::publish` over 10 keys with the consumer
//!   draining on its single wake (yielding every 1024 publishes, like the mailbox path).
//!
//! Each measurement ends with a request/response round trip, so every message counted was
//! also handled (or conflated away, for the conflator).

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vpp_actors::{
    ActorName, BoundedSender, Conflator, Handles, LogicFault, Metrics, Refusable, Refused, Runtime,
    SupervisedActor, SupervisedLogic, SupervisorSpec, Wake,
};
use vpp_engine::clock::SystemClock;

const CAPACITY: usize = 1024;
const KEYS: u64 = 10;

#[derive(Message)]
#[rtype(result = "Result<(), Refused>")]
struct Bump(u64);

impl Refusable for Bump {
    /// Bench only: the sender sees refusals through `try_send`.
    fn refuse(self, _: &Refused) {}
}

#[derive(Message)]
#[rtype(result = "Result<u64, Refused>")]
struct Sync;

impl Refusable for Sync {
    /// The caller awaits the reply, which carries the refusal.
    fn refuse(self, _: &Refused) {}
}

/// Plain actix consumer for the bounded-mailbox and conflator paths.
struct Consumer {
    sum: u64,
    quotes: Conflator<u32, u64>,
    batch: Vec<(u32, u64)>,
}

impl Actor for Consumer {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(CAPACITY);
    }
}

impl Handler<Bump> for Consumer {
    type Result = Result<(), Refused>;
    fn handle(&mut self, msg: Bump, _: &mut Context<Self>) -> Self::Result {
        self.sum = self.sum.wrapping_add(msg.0);
        Ok(())
    }
}

impl Handler<Wake<u32, u64>> for Consumer {
    type Result = Result<(), Refused>;
    fn handle(&mut self, wake: Wake<u32, u64>, _: &mut Context<Self>) -> Self::Result {
        self.batch.clear();
        self.quotes.drain(wake, &mut self.batch);
        for &(_, v) in &self.batch {
            self.sum = self.sum.wrapping_add(v);
        }
        Ok(())
    }
}

impl Handler<Sync> for Consumer {
    type Result = Result<u64, Refused>;
    fn handle(&mut self, _: Sync, _: &mut Context<Self>) -> Self::Result {
        Ok(self.sum)
    }
}

/// The same consumer as a supervised logic.
struct Summer {
    sum: u64,
}

impl SupervisedLogic for Summer {
    type Snapshot = u64;
    fn snapshot(&self) -> u64 {
        self.sum
    }
}

impl Handles<Bump> for Summer {
    type Reply = ();
    fn handle(&mut self, msg: Bump) -> Result<(), LogicFault> {
        self.sum = self.sum.wrapping_add(msg.0);
        Ok(())
    }
}

impl Handles<Sync> for Summer {
    type Reply = u64;
    fn handle(&mut self, _: Sync) -> Result<u64, LogicFault> {
        Ok(self.sum)
    }
}

async fn send_all(sender: &BoundedSender<Bump>, iters: u64) {
    for i in 0..iters {
        let mut msg = Bump(i);
        loop {
            match sender.try_send(msg) {
                Ok(()) => break,
                Err(rejected) => {
                    // Full: let the consumer drain, then retry the very same message.
                    msg = rejected.message;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

fn bench_paths(c: &mut Criterion) {
    let system = System::new();
    let metrics = Metrics::new();
    let quotes = Conflator::<u32, u64>::new(ActorName::new("bench"), KEYS as usize, &metrics);
    let consumer = system.block_on(async {
        Consumer {
            sum: 0,
            quotes: quotes.clone(),
            batch: Vec::with_capacity(KEYS as usize),
        }
        .start()
    });
    let plain = BoundedSender::new(
        consumer.clone().recipient(),
        ActorName::new("bench"),
        CAPACITY,
        &metrics,
    );
    let producer = quotes.sender(consumer.clone().recipient());
    let supervised = system.block_on(async {
        let rt = Runtime::new(Arc::new(SystemClock::new()));
        SupervisedActor::new(
            SupervisorSpec::new("bench/supervised")
                .mailbox_capacity(CAPACITY)
                .snapshot_every(64),
            rt,
            Summer { sum: 0 },
            |sum: &u64| Ok(Summer { sum: *sum }),
        )
        .expect("valid policy")
        .start()
    });
    let supervised_sender = supervised.sender::<Bump>();

    let mut group = c.benchmark_group("mailbox");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));

    group.bench_function("bounded_try_send_handle", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                send_all(&plain, iters).await;
                consumer.send(Sync).await.expect("alive").expect("ok");
                start.elapsed()
            })
        })
    });

    group.bench_function("supervised_try_send_handle", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                send_all(&supervised_sender, iters).await;
                supervised
                    .addr
                    .send(Sync)
                    .await
                    .expect("alive")
                    .expect("ok");
                start.elapsed()
            })
        })
    });

    group.bench_function("conflator_publish_drain", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    producer
                        .publish((i % KEYS) as u32, i)
                        .expect("consumer alive");
                    if i % CAPACITY as u64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                consumer.send(Sync).await.expect("alive").expect("ok");
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_paths);
criterion_main!(benches);
