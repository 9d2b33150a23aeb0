//! Back-pressure: conflated market data to a slow consumer, conflator bounds, and typed
//! topics. The slow consumer runs on its own arbiter (thread) so the producer really outruns
//! it. No timing assertions: the checks are on counts, order and final values.

use actix::prelude::*;
use chrono::TimeZone;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use vpp_actors::metrics::names;
use vpp_actors::{
    ActorName, ConflatedTopic, Conflator, Handles, LogicFault, Metrics, Refusable, Refused,
    Runtime, SupervisedActor, SupervisedLogic, SupervisorSpec, Topic, Wake,
};
use vpp_engine::clock::ManualClock;

type Key = u32;
type Seq = u64;

const UPDATES: u64 = 100_000;
const KEYS: u64 = 10;
const CONSUMER_CAPACITY: usize = 4;

/// What the consumer has seen so far.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    latest: BTreeMap<Key, Seq>,
    delivered: u64,
    drains: u64,
    /// Values that arrived older than one already seen for the key (must stay 0).
    out_of_order: u64,
}

#[derive(Message)]
#[rtype(result = "Result<Seen, Refused>")]
struct Probe;

impl Refusable for Probe {
    /// The caller awaits the reply, which carries the refusal.
    fn refuse(self, _: &Refused) {}
}

/// A strategy that is slow on every market-data batch.
struct SlowConsumer {
    quotes: Conflator<Key, Seq>,
    batch: Vec<(Key, Seq)>,
    seen: Seen,
    work_per_batch: Duration,
}

impl SupervisedLogic for SlowConsumer {
    type Snapshot = Seen;
    fn snapshot(&self) -> Seen {
        self.seen.clone()
    }
}

impl Handles<Wake<Key, Seq>> for SlowConsumer {
    type Reply = ();
    fn handle(&mut self, wake: Wake<Key, Seq>) -> Result<(), LogicFault> {
        self.batch.clear();
        self.quotes.drain(wake, &mut self.batch);
        self.seen.drains += 1;
        for &(key, seq) in &self.batch {
            let previous = self.seen.latest.insert(key, seq);
            if previous.is_some_and(|p| p >= seq) {
                self.seen.out_of_order += 1;
            }
            self.seen.delivered += 1;
        }
        std::thread::sleep(self.work_per_batch);
        Ok(())
    }
}

impl Handles<Probe> for SlowConsumer {
    type Reply = Seen;
    fn handle(&mut self, _: Probe) -> Result<Seen, LogicFault> {
        Ok(self.seen.clone())
    }
}

fn runtime() -> Runtime {
    let start = chrono::Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap();
    Runtime::new(Arc::new(ManualClock::new(start)))
}

#[actix::test]
async fn slow_consumer_gets_latest_value_per_key_and_loss_is_counted() {
    let rt = runtime();
    let name = ActorName::new("strategy/slow");
    let quotes = Conflator::<Key, Seq>::new(name.clone(), KEYS as usize, &rt.metrics);
    let consumer = {
        let quotes_for_rebuild = quotes.clone();
        let logic = SlowConsumer {
            quotes: quotes.clone(),
            batch: Vec::with_capacity(KEYS as usize),
            seen: Seen::default(),
            work_per_batch: Duration::from_micros(300),
        };
        SupervisedActor::new(
            SupervisorSpec::new(name.clone()).mailbox_capacity(CONSUMER_CAPACITY),
            rt.clone(),
            logic,
            move |seen: &Seen| {
                Ok(SlowConsumer {
                    quotes: quotes_for_rebuild.clone(),
                    batch: Vec::with_capacity(KEYS as usize),
                    seen: seen.clone(),
                    work_per_batch: Duration::from_micros(300),
                })
            },
        )
        .expect("valid policy")
    };
    let arbiter = Arbiter::new();
    let handle = consumer.start_in(&arbiter.handle());
    let producer = quotes.sender(handle.recipient::<Wake<Key, Seq>>());

    let mut last_published = BTreeMap::new();
    for seq in 1..=UPDATES {
        let key = (seq % KEYS) as Key;
        producer
            .publish(key, seq)
            .expect("10 keys fit and the consumer runs");
        last_published.insert(key, seq);
    }
    // The last wake (if one was needed) was queued before this probe, so it is handled first.
    let seen = handle
        .addr
        .send(Probe)
        .await
        .expect("alive")
        .expect("running");
    let stats = quotes.stats();

    assert_eq!(seen.latest, last_published, "latest value per key wins");
    assert_eq!(seen.out_of_order, 0);
    assert_eq!(stats.published, UPDATES);
    assert_eq!(stats.delivered, seen.delivered);
    assert_eq!(stats.pending, 0);
    assert_eq!(
        stats.conflated,
        UPDATES - seen.delivered,
        "loss = sent - delivered"
    );
    assert!(seen.delivered < UPDATES, "the slow consumer was conflated");
    assert_eq!(stats.wakes_deferred, 0);
    assert!(stats.max_queued_wakes <= 1, "{stats:?}");
    assert!(stats.max_queued_wakes <= CONSUMER_CAPACITY);
    assert!(stats.wakes_sent <= seen.drains);
    assert_eq!(
        rt.metrics
            .snapshot()
            .counter(names::CONFLATED_TOTAL, &[("consumer", "strategy/slow")]),
        Some(stats.conflated)
    );
    arbiter.stop();
}

/// A bare actix consumer, for stopping it on purpose.
struct Sink {
    quotes: Conflator<Key, Seq>,
    received: Vec<(Key, Seq)>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Wake<Key, Seq>> for Sink {
    type Result = Result<(), Refused>;
    fn handle(&mut self, wake: Wake<Key, Seq>, _: &mut Context<Self>) -> Self::Result {
        self.quotes.drain(wake, &mut self.received);
        Ok(())
    }
}

#[derive(Message)]
#[rtype(result = "Vec<(Key, Seq)>")]
struct TakeReceived;

impl Handler<TakeReceived> for Sink {
    type Result = MessageResult<TakeReceived>;
    fn handle(&mut self, _: TakeReceived, _: &mut Context<Self>) -> Self::Result {
        MessageResult(std::mem::take(&mut self.received))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Stop;

impl Handler<Stop> for Sink {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[actix::test]
async fn conflator_refuses_keys_beyond_its_bound_and_reports_a_stopped_consumer() {
    let metrics = Metrics::new();
    let quotes = Conflator::<Key, Seq>::new(ActorName::new("sink"), 2, &metrics);
    let sink = Sink {
        quotes: quotes.clone(),
        received: Vec::new(),
    }
    .start();
    let producer = quotes.sender(sink.clone().recipient());

    producer.publish(1, 10).expect("first key");
    producer.publish(2, 20).expect("second key");
    producer
        .publish(1, 11)
        .expect("existing key is overwritten");
    assert_eq!(
        producer.publish(3, 30),
        Err(Refused::ConflatorFull {
            actor: ActorName::new("sink"),
            max_keys: 2
        })
    );
    let mut received = sink.send(TakeReceived).await.expect("alive");
    received.sort();
    assert_eq!(received, vec![(1, 11), (2, 20)]);
    let stats = quotes.stats();
    assert_eq!(
        (
            stats.published,
            stats.delivered,
            stats.conflated,
            stats.refused_keys_full
        ),
        (3, 2, 1, 1)
    );

    // With the map drained, the previously refused key now fits.
    producer.publish(3, 31).expect("room again");
    assert_eq!(sink.send(TakeReceived).await.expect("alive"), vec![(3, 31)]);

    sink.send(Stop).await.expect("stop delivered");
    // Stopping is asynchronous; wait until the mailbox reports closed.
    for _ in 0..5_000 {
        if !producer.connected() {
            break;
        }
        actix::clock::sleep(Duration::from_millis(1)).await;
    }
    assert!(!producer.connected(), "the stopped sink closed its mailbox");
    assert_eq!(
        producer.publish(4, 40),
        Err(Refused::MailboxClosed {
            actor: ActorName::new("sink")
        })
    );
}

/// A subscriber of an order-update topic: records what it received.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "Result<(), Refused>")]
struct OrderUpdate {
    seq: u64,
}

impl Refusable for OrderUpdate {
    /// Delivered through `Topic::publish`, whose callback receives refusals at send time.
    fn refuse(self, _: &Refused) {}
}

struct Recorder {
    got: Vec<u64>,
}

impl SupervisedLogic for Recorder {
    type Snapshot = Vec<u64>;
    fn snapshot(&self) -> Vec<u64> {
        self.got.clone()
    }
}

impl Handles<OrderUpdate> for Recorder {
    type Reply = ();
    fn handle(&mut self, msg: OrderUpdate) -> Result<(), LogicFault> {
        self.got.push(msg.seq);
        Ok(())
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<u64>, Refused>")]
struct Got;

impl Refusable for Got {
    /// The caller awaits the reply, which carries the refusal.
    fn refuse(self, _: &Refused) {}
}

impl Handles<Got> for Recorder {
    type Reply = Vec<u64>;
    fn handle(&mut self, _: Got) -> Result<Vec<u64>, LogicFault> {
        Ok(self.got.clone())
    }
}

#[actix::test]
async fn topic_fans_out_and_hands_refusals_back_without_dropping() {
    let rt = runtime();
    let start = |name: &str, capacity: usize| {
        SupervisedActor::new(
            SupervisorSpec::new(name).mailbox_capacity(capacity),
            rt.clone(),
            Recorder { got: Vec::new() },
            |got: &Vec<u64>| Ok(Recorder { got: got.clone() }),
        )
        .expect("valid policy")
        .start()
    };
    let journal = start("journal", 1_000);
    let tiny = start("risk", 2);

    let mut topic: Topic<OrderUpdate> = Topic::new("order_updates", 2);
    topic.subscribe(journal.sender()).expect("room");
    topic.subscribe(tiny.sender()).expect("room");
    let third = start("extra", 4);
    assert!(topic.subscribe(third.sender()).is_err(), "bounded");

    let mut refused = Vec::new();
    let mut delivered = 0;
    for seq in 1..=20 {
        delivered += topic.publish(OrderUpdate { seq }, |r| {
            assert_eq!(r.reason.reason(), "mailbox_full");
            assert_eq!(r.reason.actor().as_str(), "risk");
            refused.push(r.message.seq);
        });
    }
    let journal_got = journal
        .addr
        .send(Got)
        .await
        .expect("alive")
        .expect("running");
    let risk_got = tiny.addr.send(Got).await.expect("alive").expect("running");
    assert_eq!(journal_got, (1..=20).collect::<Vec<u64>>());
    assert!(!refused.is_empty());
    // Every update reached the small mailbox or came back to the publisher; none vanished.
    let mut accounted: Vec<u64> = risk_got.iter().chain(&refused).copied().collect();
    accounted.sort();
    assert_eq!(accounted, (1..=20).collect::<Vec<u64>>());
    assert_eq!(delivered, 20 + risk_got.len());
}

#[actix::test]
async fn conflated_topic_writes_into_every_subscriber() {
    let metrics = Metrics::new();
    let mut sinks = Vec::new();
    let mut topic: ConflatedTopic<Key, Seq> = ConflatedTopic::new("prices", 8);
    for name in ["s1", "s2"] {
        let quotes = Conflator::<Key, Seq>::new(ActorName::new(name), 4, &metrics);
        let sink = Sink {
            quotes: quotes.clone(),
            received: Vec::new(),
        }
        .start();
        topic
            .subscribe(quotes.sender(sink.clone().recipient()))
            .expect("room");
        sinks.push(sink);
    }
    for seq in 1..=3 {
        let accepted = topic.publish(&7, &seq, |r| panic!("unexpected refusal {r}"));
        assert_eq!(accepted, 2);
    }
    for sink in &sinks {
        let got = sink.send(TakeReceived).await.expect("alive");
        assert_eq!(
            got.last(),
            Some(&(7, 3)),
            "latest value wins per subscriber"
        );
    }
}
