//! Typed topics: explicit subscriptions held by the publishing actor, no string lookup and no
//! type-map lookup on the hot path.
//!
//! A [`Topic<M>`] is a plain list of [`BoundedSender<M>`]s owned by the actor that publishes
//! `M` (e.g. the OMS owns `Topic<OrderUpdate>`). Subscribing happens at wiring time, directly or
//! through the [`Subscribe<M>`] message the publisher handles by calling
//! [`Topic::subscribe`]. A [`ConflatedTopic<K, V>`] does the same for latest-value-wins streams
//! (market data, capacity), writing into each subscriber's [`crate::conflate::Conflator`].
//!
//! Invariants:
//! - Publishing never blocks, never drops silently: each subscriber either receives the message
//!   or the publisher's `on_refused` callback receives it back with the reason.
//! - Subscribers whose actor has stopped are removed on the next publish (after their refusal
//!   was reported), so a topic does not keep dead recipients.
//! - The number of subscribers is bounded by the `max_subscribers` given at construction.

use crate::conflate::ConflatedSender;
use crate::mailbox::{BoundedSender, Refused, Rejected};
use actix::Message;
use std::hash::Hash;

/// Identifies one subscription within its topic (for unsubscribing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// Subscribing past a topic's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic {topic} already has its maximum of {max} subscribers")]
pub struct TopicFull {
    pub topic: &'static str,
    pub max: usize,
}

/// A typed fan-out of `M` to bounded mailboxes.
pub struct Topic<M>
where
    M: Message + Send,
    M::Result: Send,
{
    name: &'static str,
    max_subscribers: usize,
    next_id: u64,
    subscribers: Vec<(SubscriptionId, BoundedSender<M>)>,
}

impl<M> Topic<M>
where
    M: Message + Send + Clone,
    M::Result: Send,
{
    pub fn new(name: &'static str, max_subscribers: usize) -> Self {
        Self {
            name,
            max_subscribers,
            next_id: 0,
            subscribers: Vec::new(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn subscribe(&mut self, sender: BoundedSender<M>) -> Result<SubscriptionId, TopicFull> {
        if self.subscribers.len() >= self.max_subscribers {
            return Err(TopicFull {
                topic: self.name,
                max: self.max_subscribers,
            });
        }
        self.next_id += 1;
        let id = SubscriptionId(self.next_id);
        self.subscribers.push((id, sender));
        Ok(id)
    }

    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|(sid, _)| *sid != id);
        self.subscribers.len() != before
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Sends `msg` to every subscriber (cloning for all but the last). Refusals go to
    /// `on_refused` with the message. Returns how many subscribers accepted it.
    pub fn publish(&mut self, msg: M, mut on_refused: impl FnMut(Rejected<M>)) -> usize {
        let mut delivered = 0;
        let mut saw_closed = false;
        let mut msg = Some(msg);
        let last = self.subscribers.len().saturating_sub(1);
        for (i, (_, sender)) in self.subscribers.iter().enumerate() {
            let one = if i == last { msg.take() } else { msg.clone() };
            let Some(one) = one else { break };
            match sender.try_send(one) {
                Ok(()) => delivered += 1,
                Err(rejected) => {
                    saw_closed |= matches!(rejected.reason, Refused::MailboxClosed { .. });
                    on_refused(rejected);
                }
            }
        }
        if saw_closed {
            self.subscribers.retain(|(_, s)| s.connected());
        }
        delivered
    }
}

/// Subscribe a bounded sender to the publisher's `Topic<M>`; the publisher's handler calls
/// [`Topic::subscribe`].
pub struct Subscribe<M>(pub BoundedSender<M>)
where
    M: Message + Send,
    M::Result: Send;

impl<M> Message for Subscribe<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<SubscriptionId, TopicFull>;
}

/// A typed fan-out of latest-value-wins updates into each subscriber's conflator.
pub struct ConflatedTopic<K: 'static, V: 'static> {
    name: &'static str,
    max_subscribers: usize,
    next_id: u64,
    subscribers: Vec<(SubscriptionId, ConflatedSender<K, V>)>,
}

impl<K, V> ConflatedTopic<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    pub fn new(name: &'static str, max_subscribers: usize) -> Self {
        Self {
            name,
            max_subscribers,
            next_id: 0,
            subscribers: Vec::new(),
        }
    }

    pub fn subscribe(
        &mut self,
        sender: ConflatedSender<K, V>,
    ) -> Result<SubscriptionId, TopicFull> {
        if self.subscribers.len() >= self.max_subscribers {
            return Err(TopicFull {
                topic: self.name,
                max: self.max_subscribers,
            });
        }
        self.next_id += 1;
        let id = SubscriptionId(self.next_id);
        self.subscribers.push((id, sender));
        Ok(id)
    }

    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|(sid, _)| *sid != id);
        self.subscribers.len() != before
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Writes (key, value) into every subscriber's conflator. Refusals (key bound reached,
    /// consumer stopped) go to `on_refused`. Returns how many accepted the value.
    pub fn publish(&mut self, key: &K, value: &V, mut on_refused: impl FnMut(Refused)) -> usize {
        let mut delivered = 0;
        let mut saw_closed = false;
        for (_, sender) in &self.subscribers {
            match sender.publish(key.clone(), value.clone()) {
                Ok(()) => delivered += 1,
                Err(reason) => {
                    saw_closed |= matches!(reason, Refused::MailboxClosed { .. });
                    on_refused(reason);
                }
            }
        }
        if saw_closed {
            self.subscribers.retain(|(_, s)| s.connected());
        }
        delivered
    }
}
