//! Group and channel names, parsed once at the edge.
//!
//! The rules are Django Channels': a name is 1 to 100 ASCII letters, digits, `-`, `_`, `.` —
//! plus `!` in channel names, which separates the instance part from the connection part. Names
//! travel in SQL parameters only, never in SQL text, so the rules are for clear errors and for
//! keys that read well in the operations pages, not for safety.

use std::fmt;

use super::ChannelError;

const MAX_LEN: usize = 100;

fn check(kind: &'static str, raw: &str, extra: &[char]) -> Result<(), ChannelError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_LEN
        && raw.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || extra.contains(&c)
        });
    if ok {
        Ok(())
    } else {
        Err(ChannelError::InvalidName {
            kind,
            name: raw.chars().take(MAX_LEN).collect(),
        })
    }
}

/// The name of a group, such as `chat.lobby` or `user.42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    pub fn parse(raw: impl Into<String>) -> Result<Self, ChannelError> {
        let raw = raw.into();
        check("group", &raw, &[])?;
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name of one connection's channel: `<instance>!<counter>`, unique across instances.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn parse(raw: impl Into<String>) -> Result<Self, ChannelError> {
        let raw = raw.into();
        check("channel", &raw, &['!'])?;
        if !raw.contains('!') {
            return Err(ChannelError::InvalidName {
                kind: "channel",
                name: raw,
            });
        }
        Ok(Self(raw))
    }

    pub(crate) fn new_unchecked(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The instance that holds this channel's connection.
    pub fn instance(&self) -> &str {
        self.0.split('!').next().unwrap_or_default()
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_follow_the_channels_rules() {
        assert!(GroupName::parse("chat.lobby-1_a").is_ok());
        assert!(GroupName::parse("").is_err());
        assert!(GroupName::parse("with space").is_err());
        assert!(GroupName::parse("a!b").is_err());
        assert!(GroupName::parse("x".repeat(101)).is_err());
        assert!(GroupName::parse("x".repeat(100)).is_ok());
    }

    #[test]
    fn channel_names_carry_their_instance() {
        let name = ChannelName::parse("web-1.abc!42").unwrap();
        assert_eq!(name.instance(), "web-1.abc");
        assert!(ChannelName::parse("no-bang").is_err());
    }
}
