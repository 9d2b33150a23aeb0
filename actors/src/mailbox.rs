//! Back-pressure on the message paths that must never lose a message (orders, execution
//! reports, control): bounded mailboxes, `try_send` only, and a typed refusal that goes back
//! to the sender together with the message.
//!
//! actix facts this module is built around (actix 0.13):
//! - `Addr::do_send`/`Recipient::do_send` ignore the mailbox capacity and silently drop on a
//!   closed mailbox: never use them on these paths.
//! - `try_send` respects capacity (set by the receiver with `ctx.set_mailbox_capacity(n)`,
//!   default 16). actix admits one message per sender past the capacity ("each sender gets a
//!   guaranteed slot"), then parks that sender and refuses with `SendError::Full` until the
//!   receiver drains: the queue is bounded by `capacity + number of senders`.
//!
//! Invariants:
//! - [`BoundedSender::try_send`] either enqueues the message or hands it back in a
//!   [`Rejected`] with the reason ([`Refused::MailboxFull`] naming the actor and capacity, or
//!   [`Refused::MailboxClosed`]); every refusal is also counted in
//!   `vpp_refusals_total{actor,reason}`. Nothing is dropped silently.
//! - [`Refusable`] is how a *receiver* that will not handle a message (halted actor) routes the
//!   refusal back to the message's origin.

use crate::metrics::{names, Counter, Metrics};
use actix::prelude::SendError;
use actix::{Message, Recipient};
use serde::{Serialize, Serializer};
use std::fmt;
use std::sync::Arc;

/// Name of an actor (e.g. `strategy/battery-1`). Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorName(Arc<str>);

impl ActorName {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ActorName {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for ActorName {
    fn from(name: String) -> Self {
        Self(Arc::from(name))
    }
}

impl fmt::Display for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for ActorName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Why a message was not (or will not be) handled. Each variant names the actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("mailbox of {actor} is full (capacity {capacity}); shed or retry upstream")]
    MailboxFull { actor: ActorName, capacity: usize },
    #[error("{actor} has stopped; its mailbox is closed")]
    MailboxClosed { actor: ActorName },
    #[error("{actor} crashed handling this message ({cause}); it restarts from its last snapshot")]
    Crashed { actor: ActorName, cause: Arc<str> },
    #[error("{actor} is restarting after a crash; message not handled")]
    Restarting { actor: ActorName },
    #[error("{actor} is halted past its restart limit ({cause}); an operator must resume it")]
    Halted { actor: ActorName, cause: Arc<str> },
    #[error("conflation buffer of {actor} already holds its maximum of {max_keys} keys")]
    ConflatorFull { actor: ActorName, max_keys: usize },
}

impl Refused {
    /// Stable machine-readable reason (metrics label, API error code).
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::MailboxFull { .. } => "mailbox_full",
            Refused::MailboxClosed { .. } => "mailbox_closed",
            Refused::Crashed { .. } => "crashed",
            Refused::Restarting { .. } => "restarting",
            Refused::Halted { .. } => "halted",
            Refused::ConflatorFull { .. } => "conflator_full",
        }
    }

    pub fn actor(&self) -> &ActorName {
        match self {
            Refused::MailboxFull { actor, .. }
            | Refused::MailboxClosed { actor }
            | Refused::Crashed { actor, .. }
            | Refused::Restarting { actor }
            | Refused::Halted { actor, .. }
            | Refused::ConflatorFull { actor, .. } => actor,
        }
    }
}

/// A message handed back to its sender, with the reason.
pub struct Rejected<M> {
    pub message: M,
    pub reason: Refused,
}

impl<M> Rejected<M> {
    pub fn into_parts(self) -> (M, Refused) {
        (self.message, self.reason)
    }
}

impl<M> fmt::Debug for Rejected<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("message", &std::any::type_name::<M>())
            .field("reason", &self.reason)
            .finish()
    }
}

impl<M> fmt::Display for Rejected<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused: {}", std::any::type_name::<M>(), self.reason)
    }
}

impl<M> std::error::Error for Rejected<M> {}

/// A message a receiver may refuse without handling it (e.g. because it is halted).
///
/// `refuse` must route the refusal to whoever needs to know (a reply recipient carried in the
/// message, the originating strategy, ...). The supervisor has already logged and counted it,
/// and a caller that used `send` also receives the `Err(Refused)` as its reply. An empty body is
/// only right when nobody upstream can act on it; say why in a comment.
pub trait Refusable: Message {
    fn refuse(self, reason: &Refused);
}

/// A capacity-respecting sender of `M` to one actor.
pub struct BoundedSender<M>
where
    M: Message + Send,
    M::Result: Send,
{
    recipient: Recipient<M>,
    actor: ActorName,
    capacity: usize,
    refused_full: Counter,
    refused_closed: Counter,
}

impl<M> Clone for BoundedSender<M>
where
    M: Message + Send,
    M::Result: Send,
{
    fn clone(&self) -> Self {
        Self {
            recipient: self.recipient.clone(),
            actor: self.actor.clone(),
            capacity: self.capacity,
            refused_full: self.refused_full.clone(),
            refused_closed: self.refused_closed.clone(),
        }
    }
}

impl<M> BoundedSender<M>
where
    M: Message + Send,
    M::Result: Send,
{
    /// `capacity` is the mailbox capacity the receiving actor configured; it is reported in
    /// refusals (the sender cannot read it from actix).
    pub fn new(
        recipient: Recipient<M>,
        actor: ActorName,
        capacity: usize,
        metrics: &Metrics,
    ) -> Self {
        let refused_full = metrics.counter(
            names::REFUSALS_TOTAL,
            &[("actor", actor.as_str()), ("reason", "mailbox_full")],
        );
        let refused_closed = metrics.counter(
            names::REFUSALS_TOTAL,
            &[("actor", actor.as_str()), ("reason", "mailbox_closed")],
        );
        Self {
            recipient,
            actor,
            capacity,
            refused_full,
            refused_closed,
        }
    }

    /// Enqueues `msg` or hands it back with the reason. Never blocks, never drops.
    pub fn try_send(&self, msg: M) -> Result<(), Rejected<M>> {
        match self.recipient.try_send(msg) {
            Ok(()) => Ok(()),
            Err(SendError::Full(message)) => {
                self.refused_full.inc();
                Err(Rejected {
                    message,
                    reason: Refused::MailboxFull {
                        actor: self.actor.clone(),
                        capacity: self.capacity,
                    },
                })
            }
            Err(SendError::Closed(message)) => {
                self.refused_closed.inc();
                Err(Rejected {
                    message,
                    reason: Refused::MailboxClosed {
                        actor: self.actor.clone(),
                    },
                })
            }
        }
    }

    pub fn actor(&self) -> &ActorName {
        &self.actor
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// False once the receiving actor has stopped.
    pub fn connected(&self) -> bool {
        self.recipient.connected()
    }

    /// The underlying recipient, for request/response (`send().await`) off the hot path.
    pub fn recipient(&self) -> &Recipient<M> {
        &self.recipient
    }
}
