//! What a post is made of, parsed at the edge: titles, bodies and slugs (titles and slugs
//! are the platform's, shared with other apps: [`crate::text`]).

pub use crate::text::{Slug, Title};

/// A post body in Markdown: at most 100,000 characters.
#[derive(Debug, Clone)]
pub struct Body(String);

pub const MAX_BODY: usize = 100_000;

impl Body {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // Browsers send CRLF from textareas, and old Mac files end lines with CR alone; store
        // one kind of newline (CR CR LF would leave a CRLF if only CRLF were replaced).
        let body = raw.replace("\r\n", "\n").replace('\r', "\n");
        let n = body.chars().count();
        if n > MAX_BODY {
            return Err(format!(
                "The post is {n} characters long; the limit is {MAX_BODY}."
            ));
        }
        Ok(Self(body))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_limits() {
        assert!(Body::parse(&"x".repeat(MAX_BODY + 1)).is_err());
        assert_eq!(Body::parse("a\r\nb").unwrap().as_str(), "a\nb");
        assert_eq!(Body::parse("a\r\r\nb\rc").unwrap().as_str(), "a\n\nb\nc");
    }
}
