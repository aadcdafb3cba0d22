//! Stream order across reconnects (`exclusive_stream`).
//!
//! # The problem
//!
//! When a connection drops with publishes in flight, some of them were written to the
//! old socket and are lost, while later ones still wait in async-nats' command queue.
//! The client writes the queued ones as soon as it has reconnected, so they can be stored
//! ahead of the lost ones, which the pipeline resends only afterwards. Deduplication then
//! drops the resent copies of the queued ones: nothing is lost, but the stream's order is
//! no longer the source's.
//!
//! # The fix
//!
//! Every publish names its predecessor in the stream with `Nats-Expected-Last-Msg-Id`.
//! JetStream checks it against the id of the last message the stream stored and refuses
//! the publish when they differ, so a message is stored only right after its predecessor:
//! by induction, a stored message means every earlier one was stored, in order. A queued
//! publish whose predecessor was lost is refused; the pipeline resends from the failed
//! batch, in order, and the chain resumes. JetStream checks `Nats-Msg-Id` duplicates
//! before the expectation, so a resent message that was stored already is acknowledged as
//! a duplicate whatever it expects.
//!
//! This needs the stream to hold only this pipeline's messages: a message from anyone
//! else breaks the chain. A refusal naming a last id this sink never published is
//! therefore fatal, with what to change.
//!
//! A publish goes out without an expectation in two cases, both safe:
//! - the first one after the sink connected: nothing older can still be queued in a new
//!   client;
//! - the first one of a resend after JetStream said it no longer knows its last id (the
//!   server restarted after the duplicate window passed, or the stream was purged), and
//!   only when the predecessor's batch was acknowledged, so the predecessor is stored.
//!
//! An event the stream itself refuses (larger than its `max_msg_size`) is never stored,
//! so it never becomes anyone's predecessor once it was refused.
//!
//! # One acknowledgement per batch
//!
//! The chain makes a batch's last publish vouch for the whole batch: it is stored only
//! right after its predecessor, which was stored only right after its own, and so on to
//! the batch's first publish, which follows the previous batch. (JetStream answers a
//! resent message that it stored before as a duplicate; that copy was stored under the
//! same expectation, so the argument holds for it too.) A batch sent for the first time
//! therefore asks for an acknowledgement of its last publish only, and publishes the
//! others without a reply subject: the server neither writes nor sends an ack for them
//! and the client keeps no reply state. What the stream refuses without a reply subject
//! (an event over its `max_msg_size`, a message lost across a reconnect) is refused
//! silently, but it breaks the chain, so the last publish is refused too and the batch
//! fails. Its resend asks for an acknowledgement of every publish, which names the event
//! the stream refuses, so a batch is never retried blind twice. Without a chain (shared
//! streams) every publish is acknowledged.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use outflow_core::Error;

/// The publish header that names the stream's expected last message id.
pub(crate) const EXPECTED_LAST_MSG_ID: &str = "Nats-Expected-Last-Msg-Id";

/// How many batch starts are remembered; a resend always starts within the pipeline's
/// window of batches in flight, which is far smaller.
const STARTS: usize = 4096;

/// Where a batch starts in the chain.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Start {
    /// The id the batch's first publish must follow (`None`: publish without an
    /// expectation).
    pub(crate) before: Option<String>,
    /// Whether a batch starting with the same event was sent before: this is a resend
    /// after a failure.
    pub(crate) resend: bool,
}

/// How JetStream's refusal of an expectation is to be handled.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The chain was broken by a reconnect or a lost message of ours: resend in order.
    Transient(Error),
    /// Someone else writes to the stream: the pipeline must stop.
    Fatal(Error),
}

/// The chain of one sink: which message each publish must follow.
#[derive(Debug)]
pub(crate) struct Chain {
    stream: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The id of the last message queued in chain order; `None` before the first.
    last: Option<String>,
    /// For recently sent batches: the first event's id and the id it followed. A resend
    /// starts with the first event of a batch sent before; it must follow the same
    /// predecessor again.
    starts: VecDeque<(String, Option<String>)>,
    /// Ids this sink published (and the stream's last id when it connected).
    ours: Ours,
    /// The last event ids of batches whose every publish was acknowledged.
    acked: Recent,
    /// Ids the stream refused for good (per-event); they never become a predecessor.
    refused: HashSet<u64>,
    /// JetStream said it does not know its last id: the next resend may restart the
    /// chain after an acknowledged predecessor.
    lost_track: bool,
}

impl Chain {
    /// A chain for `stream`, whose last stored message id was `stream_last` when the sink
    /// connected. Every id published since the last acknowledged batch is remembered,
    /// and `capacity` more: how many acknowledged ones are still recognised as our own
    /// when a server that lost its latest messages names one of them.
    pub(crate) fn new(stream: String, stream_last: Option<String>, capacity: usize) -> Chain {
        let mut ours = Ours::new(capacity);
        if let Some(id) = &stream_last {
            ours.insert(id);
        }
        Chain {
            stream,
            state: Mutex::new(State {
                last: None,
                starts: VecDeque::new(),
                ours,
                acked: Recent::new(STARTS),
                refused: HashSet::new(),
                lost_track: false,
            }),
        }
    }

    /// The stream the chain runs through.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement: a panic elsewhere cannot leave
        // it half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a batch whose first event is `first`: where its first publish goes in the
    /// chain, and whether the batch was sent before.
    pub(crate) fn begin(&self, first: &str) -> Start {
        let mut state = self.lock();
        let remembered = state
            .starts
            .iter()
            .rev()
            .find(|(id, _)| id == first)
            .map(|(_, before)| before.clone());
        let resend = remembered.is_some();
        let before = match remembered {
            Some(before) => before,
            None => {
                let before = state.last.clone();
                if state.starts.len() == STARTS {
                    state.starts.pop_front();
                }
                state.starts.push_back((first.to_string(), before.clone()));
                before
            }
        };
        if state.lost_track {
            let stored = before.as_deref().is_none_or(|id| state.acked.contains(id));
            if stored {
                state.lost_track = false;
                return Start {
                    before: None,
                    resend,
                };
            }
        }
        Start { before, resend }
    }

    /// Records that `id` is about to be published. It counts as ours from now on: a
    /// publish that timed out while being queued may still reach the stream.
    pub(crate) fn publishing(&self, id: &str) {
        self.lock().ours.insert(id);
    }

    /// Records that `id` was queued for publishing after the previous one. Returns
    /// whether it is the predecessor of the next publish: not when the stream refused it
    /// for good before.
    pub(crate) fn published(&self, id: &str) -> bool {
        let mut state = self.lock();
        if !state.refused.is_empty() && state.refused.contains(&hash(id)) {
            return false;
        }
        match &mut state.last {
            Some(last) => {
                last.clear();
                last.push_str(id);
            }
            None => state.last = Some(id.to_string()),
        }
        true
    }

    /// Records that every publish of a batch up to and including `last_id` was
    /// acknowledged.
    pub(crate) fn acknowledged(&self, last_id: &str) {
        let mut state = self.lock();
        state.acked.insert(last_id);
        state.ours.acknowledged(last_id);
    }

    /// Records that the stream refused `id` for good (a per-event error).
    pub(crate) fn refused(&self, id: &str) {
        self.lock().refused.insert(hash(id));
    }

    /// Classifies JetStream's refusal of a publish to `subject` that expected another last
    /// message id; `description` is the API error as async-nats prints it (`wrong last
    /// msg ID: <id> (code 400, error code 10070)`).
    pub(crate) fn refusal(&self, subject: &str, description: &str) -> Refusal {
        let actual = description
            .strip_prefix("wrong last msg ID:")
            .map(|rest| rest.split(" (code ").next().unwrap_or(rest).trim());
        let mut state = self.lock();
        match actual {
            Some("") => {
                state.lost_track = true;
                Refusal::Transient(Error::transient(format!(
                    "stream {:?} no longer knows the id of its last message (it restarted \
                     after the duplicate window passed, or was purged); the publish to \
                     {subject:?} is resent and the order chain restarts after the last \
                     acknowledged message",
                    self.stream
                )))
            }
            Some(id) if state.ours.contains(id) => Refusal::Transient(Error::transient(format!(
                "stream {:?} refused a publish to {subject:?} that did not follow its last \
                 message {id:?} (a message before it was lost across a reconnect or refused \
                 by the stream); the batch is resent in order, each publish acknowledged",
                self.stream
            ))),
            Some(id) => Refusal::Fatal(Error::fatal(format!(
                "stream {:?} holds a message this pipeline did not publish (Nats-Msg-Id \
                 {id:?}), so its order cannot be kept: with exclusive_stream = true only this \
                 pipeline may write to the stream; give the pipeline a stream of its own, or \
                 set exclusive_stream = false to share it (order may then break across a \
                 reconnect)",
                self.stream
            ))),
            None => Refusal::Transient(Error::transient(format!(
                "stream {:?} refused a publish to {subject:?} on its expected last message id: \
                 {description}",
                self.stream
            ))),
        }
    }
}

/// The ids this sink published: every one since the last acknowledged batch, exactly
/// (however long the pipeline's window of batches in flight, and however often they are
/// resent), and a fixed number of older ones.
#[derive(Debug)]
struct Ours {
    /// Ids published since the last acknowledged batch (and its last id), in the order
    /// they were first published, which is the chain's order.
    unacked: VecDeque<u64>,
    unacked_set: HashSet<u64>,
    /// The most recently published ids, acknowledged or not.
    recent: Recent,
}

impl Ours {
    fn new(capacity: usize) -> Ours {
        Ours {
            unacked: VecDeque::new(),
            unacked_set: HashSet::new(),
            recent: Recent::new(capacity),
        }
    }

    /// Records a publish of `id`; a resend of an id already recorded changes nothing.
    fn insert(&mut self, id: &str) {
        let h = hash(id);
        if self.unacked_set.insert(h) {
            self.unacked.push_back(h);
            self.recent.insert_hash(h);
        }
    }

    /// Forgets, from the exact part, the ids published before `last_id` (kept): the
    /// stream's last message is `last_id` or one after it.
    fn acknowledged(&mut self, last_id: &str) {
        let h = hash(last_id);
        if !self.unacked_set.contains(&h) {
            return;
        }
        while let Some(front) = self.unacked.pop_front() {
            if front == h {
                self.unacked.push_front(h);
                break;
            }
            self.unacked_set.remove(&front);
        }
    }

    fn contains(&self, id: &str) -> bool {
        let h = hash(id);
        self.unacked_set.contains(&h) || self.recent.contains_hash(h)
    }
}

/// A fixed number of the most recently inserted ids, kept as hashes.
#[derive(Debug)]
struct Recent {
    ring: Vec<u64>,
    next: usize,
}

impl Recent {
    fn new(capacity: usize) -> Recent {
        Recent {
            ring: Vec::with_capacity(capacity.max(1)),
            next: 0,
        }
    }

    fn insert(&mut self, id: &str) {
        self.insert_hash(hash(id));
    }

    fn insert_hash(&mut self, h: u64) {
        if self.ring.len() < self.ring.capacity() {
            self.ring.push(h);
        } else {
            self.ring[self.next] = h;
            self.next = (self.next + 1) % self.ring.len();
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.contains_hash(hash(id))
    }

    fn contains_hash(&self, h: u64) -> bool {
        self.ring.contains(&h)
    }
}

/// FNV-1a: cheap per event, and ids are not chosen by an adversary.
fn hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Chain {
        Chain::new("S".into(), None, 16)
    }

    fn publish(chain: &Chain, ids: &[&str]) -> Vec<Option<String>> {
        let mut expected = Vec::new();
        let mut before = chain.begin(ids[0]).before;
        for id in ids {
            expected.push(before.clone());
            chain.publishing(id);
            if chain.published(id) {
                before = Some(id.to_string());
            }
        }
        expected
    }

    fn some(id: &str) -> Option<String> {
        Some(id.to_string())
    }

    #[test]
    fn batches_chain_one_after_the_other() {
        let c = chain();
        assert_eq!(publish(&c, &["a", "b"]), [None, some("a")]);
        assert_eq!(publish(&c, &["c", "d"]), [some("b"), some("c")]);
    }

    #[test]
    fn a_resend_follows_the_same_predecessor_as_the_first_send() {
        let c = chain();
        publish(&c, &["a", "b"]);
        publish(&c, &["c", "d"]);
        publish(&c, &["e", "f"]);
        // The batch starting at c failed: it and every later batch are resent.
        assert_eq!(publish(&c, &["c", "d"]), [some("b"), some("c")]);
        assert_eq!(publish(&c, &["e", "f"]), [some("d"), some("e")]);
    }

    #[test]
    fn a_batch_sent_before_is_a_resend() {
        let c = chain();
        assert_eq!(
            c.begin("a"),
            Start {
                before: None,
                resend: false
            }
        );
        publish(&c, &["a", "b"]);
        assert!(!c.begin("c").resend);
        assert!(c.begin("a").resend);
        assert!(c.begin("c").resend);
        assert!(!c.begin("d").resend);
    }

    #[test]
    fn a_refused_event_is_nobodys_predecessor_on_the_resend() {
        let c = chain();
        publish(&c, &["a"]);
        assert_eq!(
            publish(&c, &["b", "c", "d"]),
            [some("a"), some("b"), some("c")]
        );
        c.refused("c");
        assert_eq!(
            publish(&c, &["b", "c", "d"]),
            [some("a"), some("b"), some("b")]
        );
    }

    #[test]
    fn refusals_name_our_id_someone_elses_or_none() {
        let c = Chain::new("S".into(), Some("before-us".into()), 16);
        publish(&c, &["a", "b"]);
        let ours = "wrong last msg ID: a (code 400, error code 10070)";
        assert!(matches!(c.refusal("x", ours), Refusal::Transient(_)));
        let at_start = "wrong last msg ID: before-us (code 400, error code 10070)";
        assert!(matches!(c.refusal("x", at_start), Refusal::Transient(_)));
        let foreign = "wrong last msg ID: zz (code 400, error code 10070)";
        match c.refusal("x", foreign) {
            Refusal::Fatal(e) => assert!(
                e.to_string().contains(
                    "stream \"S\" holds a message this pipeline did not publish (Nats-Msg-Id \
                     \"zz\")"
                ),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        let garbled = "something else";
        assert!(matches!(c.refusal("x", garbled), Refusal::Transient(_)));
    }

    #[test]
    fn a_forgotten_last_id_restarts_the_chain_only_after_an_acknowledged_batch() {
        let c = chain();
        publish(&c, &["a", "b"]);
        publish(&c, &["c", "d"]);
        let forgotten = "wrong last msg ID:  (code 400, error code 10070)";
        assert!(matches!(c.refusal("x", forgotten), Refusal::Transient(_)));
        // b's batch is not acknowledged yet: c keeps expecting b.
        assert_eq!(c.begin("c").before, some("b"));
        c.acknowledged("b");
        // Now b is stored: c may go without an expectation, once.
        assert_eq!(c.begin("c").before, None);
        assert_eq!(c.begin("c").before, some("b"));
    }

    #[test]
    fn every_unacknowledged_id_is_ours_however_many_were_resent() {
        let c = Chain::new("S".into(), Some("at-start".into()), 4);
        let ids: Vec<String> = (0..100).map(|n| format!("e{n}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // Sent and resent many times over, never acknowledged: far more publishes than
        // the 4 remembered beyond the unacknowledged ones.
        for _ in 0..10 {
            publish(&c, &refs);
        }
        let named = |id: &str| format!("wrong last msg ID: {id} (code 400, error code 10070)");
        for id in ["at-start", "e0", "e50", "e99"] {
            assert!(
                matches!(c.refusal("x", &named(id)), Refusal::Transient(_)),
                "{id}"
            );
        }
        // Acknowledged up to e49: e0..e48 are forgotten but for the 4 most recent
        // publishes (e96..e99), e49 and later are still ours.
        c.acknowledged("e49");
        for id in ["e49", "e50", "e99", "e96"] {
            assert!(
                matches!(c.refusal("x", &named(id)), Refusal::Transient(_)),
                "{id}"
            );
        }
        for id in ["at-start", "e0", "e48"] {
            assert!(
                matches!(c.refusal("x", &named(id)), Refusal::Fatal(_)),
                "{id}"
            );
        }
    }

    #[test]
    fn recent_forgets_the_oldest() {
        let mut r = Recent::new(2);
        r.insert("a");
        r.insert("b");
        r.insert("c");
        assert!(!r.contains("a"));
        assert!(r.contains("b") && r.contains("c"));
    }
}
