//! The fragment cache: Django's `{% cache timeout name vary… %}` tag, for askama templates.
//!
//! askama compiles templates to synchronous code, so a template cannot look anything up in
//! the cache (or the database) while it renders. The handler does it instead, before the
//! page renders:
//!
//! ```ignore
//! let latest = state.cache.fragment("home-latest-posts", Duration::from_secs(300))
//!     .vary_on(language)
//!     .tags(&["posts"])
//!     .render(|| async { Ok(LatestPosts { posts: load(&db).await? }) })
//!     .await?;
//! render(&HomePage { layout, latest })   // and `{{ latest }}` in home.html
//! ```
//!
//! * the closure runs only on a miss, once per instance however many requests miss together:
//!   the queries behind the fragment are skipped along with its rendering;
//! * the key is the name plus a hash of the vary-on values (Django's `vary_on`), stored as any
//!   key is (`<prefix>:<version>:fragment:<name>:<hash>`);
//! * tags drop the fragment, on every instance, when its data changes
//!   ([`Cache::invalidate_tag`]), as they drop pages; the timeout bounds the rest;
//! * a [`Fragment`] is HTML that an askama template rendered (escaping what it showed), so the
//!   parent template writes it with `{{ latest }}`, unescaped, and no `|safe` is needed. It can
//!   only be made by [`FragmentSpec::render`], so no other string passes for safe HTML.
//!
//! A fragment is shared by every visitor: its template must not hold anything of one visitor
//! (the `Layout`, a user, a CSRF token). Those stay in the page around it, which the page
//! cache's `Personal` rule keeps private. Build it from the primary (`state.db`), never from a
//! read replica: one that had not yet replayed the write whose invalidation dropped the
//! fragment would have the old one stored until its timeout.

use std::{fmt, future::Future};

use askama::Template;
use sha2::{Digest, Sha256};

use super::{Cache, CacheError, Timeout};

/// A rendered, cached template fragment: safe HTML to write into a parent template. Neither
/// `Deserialize` nor `From<String>`: no string from elsewhere can pass for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment(String);

impl Fragment {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Rendered by askama, which escaped what the fragment shows: written as it is.
impl askama::filters::HtmlSafe for Fragment {}

/// What a fragment is cached under and for how long; [`Cache::fragment`] starts one.
pub struct FragmentSpec<'a> {
    cache: &'a Cache,
    name: &'a str,
    timeout: Timeout,
    vary: Sha256,
    tags: &'a [&'a str],
}

impl Cache {
    /// A fragment named `name`, kept for `timeout`: add what it varies on and its tags, then
    /// [`render`](FragmentSpec::render) it. See [the module](crate::cache::fragment).
    pub fn fragment<'a>(&'a self, name: &'a str, timeout: impl Into<Timeout>) -> FragmentSpec<'a> {
        FragmentSpec {
            cache: self,
            name,
            timeout: timeout.into(),
            vary: Sha256::new(),
            tags: &[],
        }
    }
}

impl<'a> FragmentSpec<'a> {
    /// One more value the fragment depends on: each distinct list of values is its own entry.
    pub fn vary_on(mut self, value: impl fmt::Display) -> Self {
        let value = value.to_string();
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") are different keys.
        self.vary.update((value.len() as u64).to_le_bytes());
        self.vary.update(value.as_bytes());
        self
    }

    /// Tags that drop the fragment when invalidated.
    pub fn tags(mut self, tags: &'a [&'a str]) -> Self {
        self.tags = tags;
        self
    }

    /// The cached fragment; on a miss, the template `build` returns, rendered and stored.
    pub async fn render<T, F, Fut>(self, build: F) -> Result<Fragment, CacheError>
    where
        T: Template,
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let key = format!(
            "fragment:{}:{}",
            self.name,
            hex::encode(self.vary.finalize())
        );
        let render = || async { Ok(build().await?.render()?) };
        self.cache
            .get_or_set_tagged::<String, _, _>(&key, self.timeout, self.tags, render)
            .await
            .map(Fragment)
    }
}
