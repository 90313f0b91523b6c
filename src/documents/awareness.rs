//! A caret and selection as editors share them (`awareness`): a typed, bounded shape.
//!
//! The browser sends its selection as two Yjs relative positions (`Y.relativePositionToJSON`
//! in `static/js/docs.js`): `{type, tname, item, assoc}`, where `type` and `item` are Yjs ids
//! `{client, clock}`, `tname` names a root type (the editor's text is `"body"`) and `assoc`
//! says which side the position sticks to. The server passes the selection on to every other
//! editor, so it accepts that shape and nothing else — numbers where numbers go, one short
//! name, no other fields — and passes on the parsed value encoded again, never the client's
//! bytes. The largest caret that can be relayed is a few hundred bytes.

use serde::{Deserialize, Serialize};

/// Longest root-type name in a position, in characters.
pub const MAX_TYPE_NAME: usize = 32;
/// Longest error message about a bad caret: serde's messages can quote the client's input.
const MAX_ERROR: usize = 200;

/// A selection: where it starts (`anchor`) and where the caret is (`head`). A position the
/// receiving client cannot resolve is skipped there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    #[serde(default)]
    anchor: Option<Position>,
    #[serde(default)]
    head: Option<Position>,
}

/// A Yjs relative position, as `Y.relativePositionToJSON` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    #[serde(rename = "type", default)]
    parent: Option<Id>,
    #[serde(default)]
    tname: Option<TypeName>,
    #[serde(default)]
    item: Option<Id>,
    #[serde(default)]
    assoc: Option<i32>,
}

/// A Yjs item id: the client that made it and its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Id {
    client: u64,
    clock: u64,
}

/// The name of a document's root type: 1 to [`MAX_TYPE_NAME`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub struct TypeName(String);

impl TryFrom<String> for TypeName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let n = name.chars().count();
        if (1..=MAX_TYPE_NAME).contains(&n) {
            Ok(Self(name))
        } else {
            Err(format!(
                "a type name is 1 to {MAX_TYPE_NAME} characters, not {n}"
            ))
        }
    }
}

/// The caret a client sent (`null`: it has none, e.g. the editor lost focus), or why it is
/// refused.
pub fn parse(value: serde_json::Value) -> Result<Option<Cursor>, String> {
    serde_json::from_value(value).map_err(|e| {
        let mut message = format!("The caret is not a selection of two Yjs positions: {e}");
        if let Some((at, _)) = message.char_indices().nth(MAX_ERROR) {
            message.truncate(at);
            message.push('…');
        }
        message
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_the_browser_sends_passes_through_unchanged() {
        let inside = json!({"type": null, "tname": "body", "item": {"client": 3_000_000_000u64, "clock": 12}, "assoc": -1});
        let at_end = json!({"type": null, "tname": "body", "item": null, "assoc": -1});
        let cursor = json!({"anchor": inside, "head": at_end});
        let parsed = parse(cursor.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), cursor);
        assert_eq!(parse(json!(null)).unwrap(), None);
        // Yjs leaves out the fields it has no value for.
        let sparse = parse(json!({"anchor": {"tname": "body", "assoc": 0}})).unwrap();
        assert!(sparse.is_some());
    }

    #[test]
    fn anything_else_is_refused_without_quoting_it_at_length() {
        let long = "x".repeat(200_000);
        for bad in [
            json!({"anchor": null, "head": null, "junk": long}),
            json!({"anchor": {"tname": long}}),
            json!({"anchor": {"tname": ""}}),
            json!({"anchor": {"item": {"client": -1, "clock": 0}}}),
            json!({"anchor": {"item": {"client": 1.5, "clock": 0}}}),
            json!({"anchor": {"item": {"client": 1, "clock": 0, "x": 1}}}),
            json!({"anchor": {"assoc": 1e12}}),
            json!(long),
            json!([1, 2, 3]),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.chars().count() <= MAX_ERROR + 1, "{error}");
        }
        let longest = "n".repeat(MAX_TYPE_NAME);
        assert!(parse(json!({"anchor": {"tname": longest}})).is_ok());
        let over = "n".repeat(MAX_TYPE_NAME + 1);
        assert!(parse(json!({"anchor": {"tname": over}})).is_err());
    }
}
