//! Text value types more than one app takes, parsed at the edge: titles and URL slugs
//! (posts and chat rooms have both). On the platform floor so that no app imports another
//! for them.

/// Slugs that name routes of their own under `/posts/` (`/posts/new`, `/posts/preview`);
/// a title that would make one gets `-post` appended.
const RESERVED: [&str; 2] = ["new", "preview"];

/// A post title: 1 to 200 characters, trimmed.
#[derive(Debug, Clone)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let title = raw.trim();
        match title.chars().count() {
            0 => Err("A post needs a title.".into()),
            1..=200 => Ok(Self(title.to_owned())),
            n => Err(format!(
                "The title is {n} characters long; the limit is 200."
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A URL slug: lower-case ASCII words joined by single hyphens, at most 80 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=80).contains(&raw.len())
            && raw.split('-').all(|word| {
                !word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a slug (lower-case words joined by hyphens)."
            ))
        }
    }

    /// The slug of a title: `"Hello, World!"` → `hello-world`; `post` when nothing is left.
    pub fn from_title(title: &Title) -> Self {
        let mut slug = String::new();
        for c in title.as_str().chars() {
            let c = fold_accent(c.to_ascii_lowercase());
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                slug.push(c);
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let mut slug: String = slug.chars().take(70).collect();
        while slug.ends_with('-') {
            slug.pop();
        }
        if slug.is_empty() {
            slug.push_str("post");
        }
        // `/posts/new` and `/posts/preview` are the editor's own routes.
        if RESERVED.contains(&slug.as_str()) {
            slug.push_str("-post");
        }
        Self(slug)
    }

    /// This slug with `-n` appended, for the n-th post with the same title.
    pub fn numbered(&self, n: u32) -> Self {
        Self(format!("{}-{n}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The common Latin letters with accents, as their base letter.
fn fold_accent(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'ç' => 'c',
        'è' | 'é' | 'ê' | 'ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'ñ' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' => 'o',
        'ù' | 'ú' | 'û' | 'ü' => 'u',
        'ý' | 'ÿ' => 'y',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_come_from_titles() {
        let slug = |t: &str| Slug::from_title(&Title::parse(t).unwrap()).0;
        assert_eq!(slug("Hello, World!"), "hello-world");
        assert_eq!(slug("  Café   crème 2 "), "cafe-creme-2");
        assert_eq!(slug("<script>"), "script");
        assert_eq!(slug("!!!"), "post");
        assert_eq!(slug("New"), "new-post");
        assert_eq!(slug("Preview"), "preview-post");
        assert!(Slug::parse(&slug(&"long words ".repeat(15))).is_ok());
    }

    #[test]
    fn slugs_are_parsed() {
        assert!(Slug::parse("a-b-1").is_ok());
        assert!(Slug::parse("A-b").is_err());
        assert!(Slug::parse("a--b").is_err());
        assert!(Slug::parse("-a").is_err());
        assert!(Slug::parse("").is_err());
    }

    #[test]
    fn titles_have_limits() {
        assert!(Title::parse("   ").is_err());
        assert!(Title::parse(&"x".repeat(201)).is_err());
        assert_eq!(Title::parse(" Hi ").unwrap().as_str(), "Hi");
    }
}
