//! Conflation of market data (or any "latest value wins" stream) to a possibly slow consumer.
//!
//! A [`Conflator<K, V>`] is a bounded keyed map shared by producers and one consumer actor.
//! Producers write through a [`ConflatedSender`]: the value replaces any undelivered value for
//! the same key (the overwritten one is counted as conflated). The consumer is told there is
//! data by a single [`Wake`] message and drains the whole map with [`Conflator::drain`].
//!
//! Invariants:
//! - At most one `Wake` per conflator is queued in the consumer's mailbox at any time, so
//!   market data never makes a mailbox grow; checked by `max_queued_wakes` in [`ConflatorStats`].
//! - Per key, the consumer sees values in publication order and always ends with the latest.
//! - Accounting is exact: `published == delivered + conflated + pending`.
//! - The map holds at most `max_keys` keys; a value for a new key beyond that is refused with
//!   [`Refused::ConflatorFull`] and counted (`refused_keys_full`), never silently dropped.
//! - Nothing allocates on publish once the map has seen its keys (capacity is reserved up
//!   front); the consumer drains into a caller-owned `Vec` it reuses.
//!
//! The wake is RAII: a [`Wake`] carries a token whose drop (handled, refused, or dropped by a
//! stopping actor) re-arms the conflator, so a lost wake can never wedge the stream. If the
//! consumer's mailbox is full when a wake is due, the wake is deferred (counted) and the next
//! publish or [`ConflatedSender::flush_wake`] retries; the data itself stays in the map.

use crate::mailbox::{ActorName, Refusable, Refused};
use crate::metrics::{names, Counter, Gauge, Metrics};
use actix::prelude::SendError;
use actix::{Message, Recipient};
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Wake state shared by producers, the queued wake and the consumer.
#[derive(Default)]
struct WakeState {
    /// 0 when no wake is outstanding, else the generation of the outstanding wake.
    pending: AtomicU64,
    next_generation: AtomicU64,
    queued: AtomicUsize,
    max_queued: AtomicUsize,
    sent: AtomicU64,
    deferred: AtomicU64,
}

struct WakeToken {
    state: Arc<WakeState>,
    generation: u64,
    dequeued: bool,
}

impl WakeToken {
    fn dequeue(&mut self) {
        if !self.dequeued {
            self.dequeued = true;
            self.state.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Lets the next publish send a new wake. Only clears its own generation, so a stale
    /// token can never clear a newer outstanding wake.
    fn rearm(&mut self) {
        self.dequeue();
        let _ = self.state.pending.compare_exchange(
            self.generation,
            0,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

impl Drop for WakeToken {
    fn drop(&mut self) {
        self.rearm();
    }
}

/// "Your conflator has data": at most one is queued per conflator. Typed by the stream's
/// key and value so a consumer with several streams has one handler per stream.
pub struct Wake<K, V> {
    token: WakeToken,
    _stream: PhantomData<fn() -> (K, V)>,
}

impl<K: 'static, V: 'static> Message for Wake<K, V> {
    type Result = Result<(), Refused>;
}

impl<K: 'static, V: 'static> Refusable for Wake<K, V> {
    /// Nothing to send back: the values stay in the conflator, and dropping the token re-arms
    /// the wake so the stream resumes when the consumer does.
    fn refuse(self, _reason: &Refused) {}
}

/// Counters of one conflator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConflatorStats {
    /// Values accepted into the map.
    pub published: u64,
    /// Values handed to the consumer.
    pub delivered: u64,
    /// Values overwritten before delivery (the loss).
    pub conflated: u64,
    /// Values refused because the map already held `max_keys` other keys.
    pub refused_keys_full: u64,
    /// Keys currently waiting for the consumer.
    pub pending: usize,
    pub wakes_sent: u64,
    /// Wakes not sent because the consumer's mailbox was full (retried on the next publish).
    pub wakes_deferred: u64,
    /// Highest number of wakes ever queued at once (1 by construction).
    pub max_queued_wakes: usize,
    /// Most keys ever waiting for the consumer at once (at most `max_keys`).
    pub max_pending: usize,
}

struct Inner<K, V> {
    consumer: ActorName,
    max_keys: usize,
    slots: Mutex<HashMap<K, V>>,
    wake: Arc<WakeState>,
    published: AtomicU64,
    delivered: AtomicU64,
    conflated: AtomicU64,
    refused_keys_full: AtomicU64,
    max_pending: AtomicUsize,
    conflated_metric: Counter,
    /// `vpp_queue_depth_max{queue=md/<consumer>}`: the high-water mark of pending keys.
    depth_metric: Gauge,
}

/// The consumer side of a conflated stream (and the factory of its senders).
pub struct Conflator<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Conflator<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K, V> Conflator<K, V>
where
    K: Eq + Hash + Send + 'static,
    V: Send + 'static,
{
    /// A conflator for `consumer` holding at most `max_keys` keys (at least 1).
    pub fn new(consumer: ActorName, max_keys: usize, metrics: &Metrics) -> Self {
        let max_keys = max_keys.max(1);
        let conflated_metric =
            metrics.counter(names::CONFLATED_TOTAL, &[("consumer", consumer.as_str())]);
        let queue = format!("md/{consumer}");
        let depth_metric = metrics.gauge(names::QUEUE_DEPTH_MAX, &[("queue", queue.as_str())]);
        Self {
            inner: Arc::new(Inner {
                consumer,
                max_keys,
                slots: Mutex::new(HashMap::with_capacity(max_keys)),
                wake: Arc::new(WakeState::default()),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                conflated: AtomicU64::new(0),
                refused_keys_full: AtomicU64::new(0),
                max_pending: AtomicUsize::new(0),
                conflated_metric,
                depth_metric,
            }),
        }
    }

    /// A producer handle that wakes the consumer through `wake` (its actor's recipient).
    pub fn sender(&self, wake: Recipient<Wake<K, V>>) -> ConflatedSender<K, V> {
        ConflatedSender {
            inner: Arc::clone(&self.inner),
            wake,
        }
    }

    /// Consumes a wake and moves every pending (key, latest value) into `out`.
    /// Returns how many were moved.
    pub fn drain(&self, mut wake: Wake<K, V>, out: &mut Vec<(K, V)>) -> usize {
        // Re-arm before taking the values: a publish racing with this drain either lands in
        // this drain or sends a fresh wake, so no value is ever stranded.
        wake.token.rearm();
        self.drain_pending(out)
    }

    /// Moves pending values into `out` without a wake (e.g. right after a restart).
    pub fn drain_pending(&self, out: &mut Vec<(K, V)>) -> usize {
        let before = out.len();
        {
            let mut slots = self
                .inner
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            out.extend(slots.drain());
        }
        let moved = out.len() - before;
        self.inner
            .delivered
            .fetch_add(moved as u64, Ordering::Relaxed);
        moved
    }

    pub fn consumer(&self) -> &ActorName {
        &self.inner.consumer
    }

    pub fn stats(&self) -> ConflatorStats {
        let pending = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let w = &self.inner.wake;
        ConflatorStats {
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            conflated: self.inner.conflated.load(Ordering::Relaxed),
            refused_keys_full: self.inner.refused_keys_full.load(Ordering::Relaxed),
            pending,
            wakes_sent: w.sent.load(Ordering::Relaxed),
            wakes_deferred: w.deferred.load(Ordering::Relaxed),
            max_queued_wakes: w.max_queued.load(Ordering::SeqCst),
            max_pending: self.inner.max_pending.load(Ordering::Relaxed),
        }
    }
}

/// Producer handle of a conflated stream. Cheap to clone; many producers may share one.
pub struct ConflatedSender<K: 'static, V: 'static> {
    inner: Arc<Inner<K, V>>,
    wake: Recipient<Wake<K, V>>,
}

impl<K: 'static, V: 'static> Clone for ConflatedSender<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            wake: self.wake.clone(),
        }
    }
}

impl<K, V> ConflatedSender<K, V>
where
    K: Eq + Hash + Send + 'static,
    V: Send + 'static,
{
    /// Stores `value` as the latest for `key` and wakes the consumer if it is not already
    /// woken. Refuses a new key when the map is full, or when the consumer has stopped.
    pub fn publish(&self, key: K, value: V) -> Result<(), Refused> {
        self.store(key, value)?;
        self.wake_if_idle()
    }

    fn store(&self, key: K, value: V) -> Result<(), Refused> {
        let inner = &self.inner;
        let mut slots = inner.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(&key) {
            *slot = value;
            inner.conflated.fetch_add(1, Ordering::Relaxed);
            inner.conflated_metric.inc();
        } else if slots.len() >= inner.max_keys {
            inner.refused_keys_full.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::ConflatorFull {
                actor: inner.consumer.clone(),
                max_keys: inner.max_keys,
            });
        } else {
            slots.insert(key, value);
            let pending = slots.len();
            if pending > inner.max_pending.load(Ordering::Relaxed) {
                inner.max_pending.fetch_max(pending, Ordering::Relaxed);
                inner.depth_metric.set_max(pending as i64);
            }
        }
        inner.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a wake if none is outstanding and values are pending. Producers may call it on a
    /// timer to retry a wake deferred by a full mailbox.
    pub fn flush_wake(&self) -> Result<(), Refused> {
        let empty = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if empty {
            return Ok(());
        }
        self.wake_if_idle()
    }

    fn wake_if_idle(&self) -> Result<(), Refused> {
        let state = &self.inner.wake;
        if state.pending.load(Ordering::SeqCst) != 0 {
            return Ok(());
        }
        let generation = state.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        if state
            .pending
            .compare_exchange(0, generation, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Ok(());
        }
        let queued = state.queued.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_queued.fetch_max(queued, Ordering::SeqCst);
        let wake = Wake {
            token: WakeToken {
                state: Arc::clone(state),
                generation,
                dequeued: false,
            },
            _stream: PhantomData,
        };
        // A failed send hands the wake back; dropping it re-arms the conflator.
        match self.wake.try_send(wake) {
            Ok(()) => {
                state.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(SendError::Full(_)) => {
                state.deferred.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(SendError::Closed(_)) => Err(Refused::MailboxClosed {
                actor: self.inner.consumer.clone(),
            }),
        }
    }

    /// False once the consumer has stopped (the publisher should drop this sender).
    pub fn connected(&self) -> bool {
        self.wake.connected()
    }

    pub fn consumer(&self) -> &ActorName {
        &self.inner.consumer
    }
}
