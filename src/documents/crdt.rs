//! The CRDT under a document: a yrs `Doc` (the Rust port of Yjs, so browsers run Yjs itself)
//! whose body is the `Y.Text` named `body`.
//!
//! The server keeps no document in memory between requests: it rebuilds one from the stored
//! snapshot and updates when a client syncs, compacts or restores, and otherwise only checks
//! that what a client sends decodes as an update. Updates commute and are idempotent, so any
//! instance can rebuild the same state from the rows it sees, in any order, and a row seen
//! twice does no harm.

use yrs::{
    Doc, GetString, ReadTxn, StateVector, Text, Transact, Update,
    updates::{decoder::Decode, encoder::Encode},
};

/// The name of the body's `Y.Text`, the same in the browser's Yjs document.
const BODY: &str = "body";

/// Why bytes from a client or the database are not a usable CRDT update.
#[derive(Debug, thiserror::Error)]
pub enum CrdtError {
    #[error("not a Yjs update: {0}")]
    Decode(String),
    #[error("not a Yjs state vector: {0}")]
    StateVector(String),
    #[error("the update cannot be applied: {0}")]
    Apply(String),
}

/// Checks that `bytes` are a Yjs v1 update, without applying them anywhere.
pub fn check_update(bytes: &[u8]) -> Result<(), CrdtError> {
    Update::decode_v1(bytes)
        .map(drop)
        .map_err(|e| CrdtError::Decode(e.to_string()))
}

/// A document rebuilt from stored updates (the snapshot is one of them).
pub struct State {
    doc: Doc,
}

impl State {
    /// Applies `updates` in the order given; any order gives the same state.
    pub fn from_updates<'a>(
        updates: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self, CrdtError> {
        let doc = Doc::new();
        doc.get_or_insert_text(BODY);
        let state = Self { doc };
        for update in updates {
            state.apply(update)?;
        }
        Ok(state)
    }

    pub fn apply(&self, update: &[u8]) -> Result<(), CrdtError> {
        let update = Update::decode_v1(update).map_err(|e| CrdtError::Decode(e.to_string()))?;
        self.doc
            .transact_mut()
            .apply_update(update)
            .map_err(|e| CrdtError::Apply(e.to_string()))
    }

    /// The whole state as one update: what a snapshot or a version stores.
    pub fn encode(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// What a peer whose state vector is `their_vector` lacks, as one update.
    pub fn diff(&self, their_vector: &[u8]) -> Result<Vec<u8>, CrdtError> {
        let vector = StateVector::decode_v1(their_vector)
            .map_err(|e| CrdtError::StateVector(e.to_string()))?;
        Ok(self.doc.transact().encode_state_as_update_v1(&vector))
    }

    /// This state's vector, which a peer diffs against to send what the server lacks.
    pub fn vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// The body as plain text.
    pub fn text(&self) -> String {
        let body = self.doc.get_or_insert_text(BODY);
        body.get_string(&self.doc.transact())
    }

    /// Edits the body into `target` and returns the edit as an update for everyone else: one
    /// delete and one insert between the common prefix and suffix, so concurrent edits outside
    /// that span survive (a restore replaces what differs, not the whole text).
    pub fn replace_text(&self, target: &str) -> Vec<u8> {
        let body = self.doc.get_or_insert_text(BODY);
        // The text is read in the same transaction that edits it, so an update applied from
        // another thread in between cannot shift the offsets.
        let mut txn = self.doc.transact_mut();
        let current = body.get_string(&txn);
        let (start, old_len, new_part) = text_change(&current, target);
        // yrs counts text offsets in bytes by default; `text_change` cuts on char boundaries.
        if old_len > 0 {
            body.remove_range(&mut txn, start, old_len);
        }
        if !new_part.is_empty() {
            body.insert(&mut txn, start, new_part);
        }
        txn.encode_update_v1()
    }
}

/// The smallest change turning `from` into `to`: its byte offset, how many bytes of `from` it
/// removes, and what it inserts there.
fn text_change<'t>(from: &str, to: &'t str) -> (u32, u32, &'t str) {
    let prefix = from
        .char_indices()
        .zip(to.chars())
        .find(|((_, a), b)| a != b)
        .map_or(from.len().min(to.len()), |((i, _), _)| i);
    // The prefix ends on a char boundary of both (same bytes up to it); find a common suffix in
    // what is left, again on char boundaries.
    let (from_rest, to_rest) = (&from[prefix..], &to[prefix..]);
    let suffix: usize = from_rest
        .chars()
        .rev()
        .zip(to_rest.chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .sum();
    let removed = from_rest.len() - suffix;
    let inserted = &to_rest[..to_rest.len() - suffix];
    (
        u32::try_from(prefix).unwrap_or(u32::MAX),
        u32::try_from(removed).unwrap_or(u32::MAX),
        inserted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edited(text: &str) -> (State, Vec<u8>) {
        let state = State::from_updates([]).unwrap();
        let update = state.replace_text(text);
        (state, update)
    }

    #[test]
    fn text_change_keeps_common_prefix_and_suffix() {
        assert_eq!(
            text_change("hello world", "hello brave world"),
            (6, 0, "brave ")
        );
        assert_eq!(text_change("abc", "abc"), (3, 0, ""));
        assert_eq!(text_change("aXc", "aYc"), (1, 1, "Y"));
        assert_eq!(text_change("", "new"), (0, 0, "new"));
        assert_eq!(text_change("gone", ""), (0, 4, ""));
        // Multi-byte characters are never cut in half.
        assert_eq!(text_change("café!", "cafè!"), (3, 2, "è"));
        assert_eq!(text_change("aa", "aaa"), (2, 0, "a"));
    }

    #[test]
    fn updates_rebuild_the_same_text_in_any_order_and_twice() {
        let (a, first) = edited("one two");
        let second = a.replace_text("one, two, three");
        let forward = State::from_updates([first.as_slice(), second.as_slice()]).unwrap();
        let backward =
            State::from_updates([second.as_slice(), first.as_slice(), second.as_slice()]).unwrap();
        assert_eq!(forward.text(), "one, two, three");
        assert_eq!(backward.text(), "one, two, three");
    }

    #[test]
    fn a_diff_against_a_peer_vector_carries_only_what_it_lacks() {
        let (server, first) = edited("shared");
        let peer = State::from_updates([first.as_slice()]).unwrap();
        server.replace_text("shared and more");
        let diff = server.diff(&peer.vector()).unwrap();
        assert!(diff.len() < server.encode().len());
        peer.apply(&diff).unwrap();
        assert_eq!(peer.text(), "shared and more");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(matches!(
            check_update(b"\xff\xff\xff"),
            Err(CrdtError::Decode(_))
        ));
        let state = State::from_updates([]).unwrap();
        assert!(matches!(
            state.diff(b"\xff\xff"),
            Err(CrdtError::StateVector(_))
        ));
        let (_, update) = edited("x");
        check_update(&update).unwrap();
    }
}
