//! What an entry is: a name and a message, checked at the edge, and the verdict of moderation.
//! No I/O here.

use serde::{Deserialize, Serialize};

/// Longest name, in characters (the table checks it too).
pub const NAME_MAX: usize = 60;

/// Longest message, in characters (the table checks it too).
pub const MESSAGE_MAX: usize = 2000;

/// Longest banned word, in characters.
pub const WORD_MAX: usize = 64;

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stored; its moderation job waits or runs.
    Pending,
    /// Shown on the page.
    Approved,
    /// Not shown; deleted a day after the verdict.
    Rejected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    /// The status stored in `guestbook_entries.status`.
    pub fn parse(stored: &str) -> Option<Self> {
        match stored {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// A new entry, checked: what the form sent, trimmed, within bounds, without control
/// characters (but for line breaks in the message, kept as `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub name: String,
    pub message: String,
}

/// What is wrong with a form, field by field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems {
    pub name: Option<String>,
    pub message: Option<String>,
}

impl NewEntry {
    pub fn parse(name: &str, message: &str) -> Result<Self, Problems> {
        let name = name.trim();
        let message = message.replace("\r\n", "\n");
        let message = message.trim();
        let problems = Problems {
            name: check(name, "your name", NAME_MAX, false),
            message: check(message, "a message", MESSAGE_MAX, true),
        };
        if problems.name.is_some() || problems.message.is_some() {
            return Err(problems);
        }
        Ok(Self {
            name: name.to_owned(),
            message: message.to_owned(),
        })
    }
}

fn check(value: &str, what: &str, max: usize, lines: bool) -> Option<String> {
    let length = value.chars().count();
    if length == 0 {
        return Some(format!("Write {what}."));
    }
    if length > max {
        return Some(format!(
            "Keep it to {max} characters (this one has {length})."
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !(lines && c == '\n'))
    {
        return Some("Remove the control characters.".into());
    }
    None
}

/// The verdict on an entry: rejected when its name or message contains one of `banned` (lower
/// case) as a whole word, whatever its case.
pub fn verdict(entry: &NewEntry, banned: &[String]) -> Status {
    let words = [&entry.name, &entry.message].into_iter().flat_map(|text| {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
    });
    for word in words {
        let word = word.to_lowercase();
        if banned.contains(&word) {
            return Status::Rejected;
        }
    }
    Status::Approved
}

/// One banned word of `--guestbook-banned-words`: letters and digits, at most [`WORD_MAX`],
/// kept in lower case. Anything else could never match a whole word, so it is refused at
/// start rather than silently ignored.
pub fn banned_word(raw: &str) -> Result<String, String> {
    let word = raw.trim();
    if word.is_empty() || word.chars().count() > WORD_MAX {
        return Err(format!("a banned word has 1 to {WORD_MAX} characters"));
    }
    if !word.chars().all(char::is_alphanumeric) {
        return Err(format!(
            "{word:?}: a banned word is letters and digits only (entries are matched word by word)"
        ));
    }
    Ok(word.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, message: &str) -> NewEntry {
        NewEntry::parse(name, message).unwrap()
    }

    #[test]
    fn forms_are_trimmed_and_bounded() {
        let ok = entry("  Ada ", "Hello\r\nthere ");
        assert_eq!(
            (ok.name.as_str(), ok.message.as_str()),
            ("Ada", "Hello\nthere")
        );
        let bad = NewEntry::parse(" ", &"x".repeat(MESSAGE_MAX + 1)).unwrap_err();
        assert_eq!(bad.name.as_deref(), Some("Write your name."));
        assert!(bad.message.unwrap().contains("2000 characters"));
        let control = NewEntry::parse("Ada\u{7}", "fine").unwrap_err();
        assert!(control.name.is_some() && control.message.is_none());
        assert!(NewEntry::parse("Ada\nLovelace", "x").is_err());
        assert!(NewEntry::parse(&"é".repeat(NAME_MAX), "x").is_ok());
    }

    #[test]
    fn banned_words_match_whole_words_in_any_case() {
        let banned = vec!["spam".to_owned(), "eggs".to_owned()];
        assert_eq!(
            verdict(&entry("Ada", "Lovely SPAM!"), &banned),
            Status::Rejected
        );
        assert_eq!(verdict(&entry("eggs", "hi"), &banned), Status::Rejected);
        assert_eq!(verdict(&entry("Ada", "spammer"), &banned), Status::Approved);
        assert_eq!(verdict(&entry("Ada", "hello"), &[]), Status::Approved);
    }

    #[test]
    fn banned_words_are_checked_at_start() {
        assert_eq!(banned_word(" Spam ").unwrap(), "spam");
        assert!(banned_word("").is_err());
        assert!(banned_word("two words").is_err());
        assert!(banned_word(&"a".repeat(WORD_MAX + 1)).is_err());
    }
}
