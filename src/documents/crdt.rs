//! The CRDT under a document: a yrs `Doc` (the Rust port of Yjs, so browsers run Yjs itself)
//! whose body is the `Y.Text` named `body`.
//!
//! The server keeps no document in memory between requests: it rebuilds one from the stored
//! snapshot and updates when a client syncs, compacts or restores, and otherwise only checks
//! that what a client sends decodes as an update. Updates commute and are idempotent, so any
//! instance can rebuild the same state from the rows it sees, and a row seen twice does no
//! harm; in theory in any order, with yrs 0.28 in the order they were stored (see
//! [`State::from_updates`]).

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

/// Checks that `bytes` are a Yjs v1 update a document can be rebuilt with, as far as an empty
/// document tells: the cheap first check on a client's update, before the database is read.
/// [`State::accepts`] is the check that counts, against the document the update will join.
pub fn check_update(bytes: &[u8]) -> Result<(), CrdtError> {
    State::from_updates([])?.accepts(bytes)
}

fn decode_update(bytes: &[u8]) -> Result<Update, CrdtError> {
    decode_from_client(bytes, "clients", Update::decode_v1).map_err(CrdtError::Decode)
}

/// Decodes a client's update or state vector with yrs: its leading count checked first, a
/// panic turned into an error.
fn decode_from_client<T, E: std::fmt::Display>(
    bytes: &[u8],
    counted: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, String> {
    if !plausible_count(bytes) {
        return Err(format!("it declares more {counted} than it holds"));
    }
    unpanicked(|| decode(bytes)).and_then(|decoded| decoded.map_err(|e| e.to_string()))
}

/// Runs yrs on bytes from a client, turning a panic into an error. yrs asserts on some
/// malformed input (a client id over 53 bits trips a `debug_assert!` in `ClientID::new`, found
/// by `fuzz/`), and a panic here would end a socket, or break loading the document for good
/// once such an update is stored.
fn unpanicked<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("malformed data ({message})")
    })
}

/// Whether the leading count of an update (its clients) or a state vector (its entries), a
/// LEB128 varint, fits the bytes: each takes two at least. yrs reserves a hash table for the
/// count before reading on, and the table is cleared as it is made, so five bytes declaring
/// 2^28 would have the server write half a gigabyte (found by `fuzz/`).
fn plausible_count(bytes: &[u8]) -> bool {
    let mut count: u64 = 0;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        count |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return count <= (bytes.len() - i - 1) as u64 / 2;
        }
    }
    // Not a varint yrs reads: it refuses the vector itself.
    true
}

/// A document rebuilt from stored updates (the snapshot is one of them).
pub struct State {
    doc: Doc,
}

impl State {
    /// Applies `updates` one by one in the order given. Give them in the order they were
    /// stored (`document::load` does): yrs 0.28 applying updates in an order that does not
    /// follow their dependencies can leave an edit pending for good, and then the document
    /// misses it and its encoding reloads with other text. In the stored order every update
    /// meets the state it was checked against ([`State::accepts`]). (Merging them into one
    /// update first would take any order for honest updates, but integrates some malformed
    /// ones differently from the one-by-one check: found by `fuzz/`.)
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

    /// Applies one update on top of this state.
    pub fn apply(&self, update: &[u8]) -> Result<(), CrdtError> {
        let update = decode_update(update)?;
        unpanicked(|| self.doc.transact_mut().apply_update(update))
            .and_then(|applied| applied.map_err(|e| e.to_string()))
            .map_err(CrdtError::Apply)
    }

    /// Checks that `update` can join this state for good: it decodes, applies, and the result
    /// encodes (as a compaction or a sync does) into an update that loads again with the same
    /// text. yrs 0.28 can decode and apply updates whose missing dependencies then make every
    /// encoding of the document panic, encode to bytes it cannot decode, or encode to a state
    /// with other text; and an update that passes against an empty document can still do that
    /// to one with text in it (all found by `fuzz/`). Stored, such an update would break the
    /// document for good. Consumes the state: what is left after a failed check is not worth
    /// keeping.
    pub fn accepts(self, update: &[u8]) -> Result<(), CrdtError> {
        self.apply(update)?;
        let snapshot = unpanicked(|| self.encode()).map_err(CrdtError::Apply)?;
        let compacted = State::from_updates([snapshot.as_slice()])
            .map_err(|e| CrdtError::Apply(format!("its compaction would not load: {e}")))?;
        if compacted.text() != self.text() {
            return Err(CrdtError::Apply(
                "its compaction would change the text".to_owned(),
            ));
        }
        Ok(())
    }

    /// The whole state as one update: what a snapshot or a version stores.
    pub fn encode(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// What a peer whose state vector is `their_vector` lacks, as one update.
    pub fn diff(&self, their_vector: &[u8]) -> Result<Vec<u8>, CrdtError> {
        let vector = decode_from_client(their_vector, "entries", StateVector::decode_v1)
            .map_err(CrdtError::StateVector)?;
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

    /// Three replicas edit concurrently, each catching up on the others' updates now and then
    /// (as sockets do); the updates rebuilt in the order they were made (the order a document
    /// stores them in) give the text every replica ends with, and it survives a compaction.
    /// (Rebuilt in a shuffled order, yrs 0.28 loses edits here from seed 0 on: why
    /// `document::load` reads rows in their stored order.)
    #[test]
    fn updates_in_stored_order_rebuild_what_every_replica_has() {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let replicas: Vec<State> = (0..3).map(|_| State::from_updates([]).unwrap()).collect();
            let mut made: Vec<Vec<u8>> = Vec::new();
            let mut seen = [0; 3];
            let catch_up = |r: usize, upto: usize, seen: &mut [usize; 3], made: &[Vec<u8>]| {
                for update in &made[seen[r]..upto] {
                    replicas[r].apply(update).unwrap();
                }
                seen[r] = seen[r].max(upto);
            };
            for n in 0..120 {
                let r = rng.random_range(0..3);
                catch_up(r, rng.random_range(seen[r]..=made.len()), &mut seen, &made);
                let mut text: Vec<char> = replicas[r].text().chars().collect();
                if text.is_empty() || rng.random_bool(0.7) {
                    let at = rng.random_range(0..=text.len());
                    text.splice(at..at, format!("[{r}é{n}]").chars());
                } else {
                    let at = rng.random_range(0..text.len());
                    let len = rng.random_range(1..=5).min(text.len() - at);
                    text.drain(at..at + len);
                }
                made.push(replicas[r].replace_text(&text.into_iter().collect::<String>()));
                // Its own edit is already in the replica.
                if seen[r] == made.len() - 1 {
                    seen[r] = made.len();
                }
            }
            let rebuilt = State::from_updates(made.iter().map(Vec::as_slice)).unwrap();
            for (r, replica) in replicas.iter().enumerate() {
                catch_up(r, made.len(), &mut seen, &made);
                assert_eq!(replica.text(), rebuilt.text(), "seed {seed}, replica {r}");
            }
            let compacted = State::from_updates([rebuilt.encode().as_slice()]).unwrap();
            assert_eq!(compacted.text(), rebuilt.text(), "seed {seed}");
        }
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

    #[test]
    fn an_update_that_would_break_encoding_is_refused() {
        // Found by `fuzz/`: in release builds it decodes and applies to an empty document,
        // whose encoding then panics in yrs 0.28 (debug builds refuse it sooner).
        let update = include_bytes!("../../fuzz/corpus/yrs_update/crash-transaction-unwrap");
        assert!(check_update(update).is_err());
        // Applies, but the document then encodes to bytes that do not decode.
        let update = include_bytes!("../../fuzz/corpus/yrs_update/snapshot-does-not-load");
        assert!(check_update(update).is_err());
    }

    #[test]
    fn an_update_is_checked_against_the_document_it_joins() {
        // Found by `fuzz/`: harmless to an empty document, but applied after some text (this
        // one-line document, written by Yjs), the document's encoding panics in yrs 0.28.
        let update = include_bytes!("../../fuzz/corpus/yrs_update/breaks-encoding-after-text");
        let base: &[u8] = include_bytes!("../../fuzz/corpus/yrs_update/base-text");
        check_update(update).unwrap();
        let document = State::from_updates([base]).unwrap();
        assert!(matches!(document.accepts(update), Err(CrdtError::Apply(_))));
        // An ordinary edit of that text is accepted.
        let document = State::from_updates([base]).unwrap();
        let edit = document.replace_text("base text, edited");
        State::from_updates([base]).unwrap().accepts(&edit).unwrap();
    }

    #[test]
    fn a_count_cannot_declare_more_than_the_bytes_hold() {
        let state = State::from_updates([]).unwrap();
        // 2^28 entries declared in five bytes.
        assert!(matches!(
            state.diff(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(CrdtError::StateVector(_))
        ));
        assert!(matches!(
            check_update(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(CrdtError::Decode(_))
        ));
        // One entry, two bytes: fine.
        assert!(state.diff(&[1, 5, 3]).is_ok());
        assert!(state.diff(&[0]).is_ok());
    }

    #[test]
    fn a_client_id_over_53_bits_does_not_panic() {
        // One entry: client 2^53 (a LEB128 varint), clock 0. yrs asserts on it in debug builds
        // and folds it onto client 0 in release ones; either way the caller gets an answer.
        let vector = [1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0];
        let state = State::from_updates([]).unwrap();
        let answer = state.diff(&vector);
        assert!(
            cfg!(debug_assertions) == answer.is_err(),
            "{:?}",
            answer.map(drop)
        );
    }
}
