//! Cache keys, parsed once: what memcached accepts and Django warns about otherwise.

use super::CacheError;

/// Longest key, in bytes, before the prefix and version are added.
const MAX_LEN: usize = 250;

/// A key: 1 to 250 bytes, no whitespace, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey<'a>(&'a str);

impl<'a> CacheKey<'a> {
    pub fn parse(raw: &'a str) -> Result<Self, CacheError> {
        let reason = if raw.is_empty() {
            Some("a key cannot be empty")
        } else if raw.len() > MAX_LEN {
            Some("a key is at most 250 bytes")
        } else if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("a key cannot contain whitespace or control characters")
        } else {
            None
        };
        match reason {
            None => Ok(Self(raw)),
            Some(reason) => Err(CacheError::InvalidKey {
                key: raw.chars().take(MAX_LEN).collect(),
                reason,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_for_length_and_characters() {
        assert!(CacheKey::parse("user:42:profile").is_ok());
        assert!(CacheKey::parse("").is_err());
        assert!(CacheKey::parse("has space").is_err());
        assert!(CacheKey::parse("tab\there").is_err());
        assert!(CacheKey::parse(&"k".repeat(250)).is_ok());
        assert!(CacheKey::parse(&"k".repeat(251)).is_err());
    }
}
