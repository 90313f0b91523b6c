//! Markdown to safe HTML: pulldown-cmark renders, ammonia removes whatever could run script
//! (raw `<script>`, `on*=` attributes, `javascript:` links) and adds `rel="noopener
//! noreferrer nofollow"` to links. Rendered once when a post is saved, not on every view.
//!
//! Headings go one level down (`#` is an `<h2>`): the post's title is the page's one `<h1>`.
//! An image from another site (`![](https://…)`, or `<img src="https://…">`) is rewritten to
//! Hearth's image proxy ([`super::images`]): the page's CSP allows images from Hearth alone.

use std::borrow::Cow;

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd, html};

use super::images::ImageSigner;

/// The level a Markdown heading is rendered at: one below, as the title is the `<h1>`.
fn demoted(level: HeadingLevel) -> HeadingLevel {
    use HeadingLevel::*;
    match level {
        H1 => H2,
        H2 => H3,
        H3 => H4,
        H4 => H5,
        H5 | H6 => H6,
    }
}

/// The sanitised HTML of `markdown`, its external images signed by `images` for the proxy.
pub fn render(markdown: &str, images: &ImageSigner) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        Event::Start(Tag::Heading {
            level,
            id,
            classes,
            attrs,
        }) => Event::Start(Tag::Heading {
            level: demoted(level),
            id,
            classes,
            attrs,
        }),
        Event::End(TagEnd::Heading(level)) => Event::End(TagEnd::Heading(demoted(level))),
        other => other,
    });
    let mut unsafe_html = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut unsafe_html, events);
    let images = images.clone();
    ammonia::Builder::default()
        .link_rel(Some("noopener noreferrer nofollow"))
        // Called on the attributes ammonia keeps, after its URL scheme checks.
        .attribute_filter(move |element, attribute, value| {
            if element == "img" && attribute == "src" {
                images
                    .rewrite(value)
                    .map_or(Some(Cow::Borrowed(value)), |proxied| {
                        Some(Cow::Owned(proxied))
                    })
            } else {
                Some(Cow::Borrowed(value))
            }
        })
        .clean(&unsafe_html)
        .to_string()
}

/// The first words of `markdown` as plain text, for lists: at most `max` characters.
pub fn excerpt(markdown: &str, max: usize) -> String {
    let mut text = String::new();
    for event in Parser::new(markdown) {
        match event {
            Event::Text(t) | Event::Code(t) => text.push_str(&t),
            Event::SoftBreak | Event::HardBreak | Event::End(TagEnd::Paragraph) => text.push(' '),
            Event::Start(Tag::Heading { .. }) | Event::End(TagEnd::Heading(_)) => text.push(' '),
            _ => {}
        }
        if text.chars().count() > max {
            break;
        }
    }
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.chars().count() <= max {
        return words;
    }
    let cut: String = words.chars().take(max).collect();
    let cut = cut.rsplit_once(' ').map_or(cut.as_str(), |(head, _)| head);
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use axum_extra::extract::cookie::Key;

    use super::*;

    fn render(markdown: &str) -> String {
        super::render(markdown, &ImageSigner::new(&Key::from(&[1u8; 64])))
    }

    #[test]
    fn markdown_is_rendered() {
        let html =
            render("# Title\n\nSome *emphasis* and `code`.\n\n| a | b |\n|---|---|\n| 1 | 2 |");
        // One level down: the post's title is the page's only <h1>.
        assert!(html.contains("<h2>Title</h2>"), "{html}");
        assert!(render("###### Six").contains("<h6>Six</h6>"));
        assert!(html.contains("<em>emphasis</em>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn script_is_removed() {
        let html = render(
            "<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n[click](javascript:alert(1)) <b onclick=\"x()\">b</b>",
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("onerror"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("onclick"), "{html}");
    }

    #[test]
    fn external_images_go_through_the_proxy_and_local_ones_stay() {
        let html = render(
            "![a](https://example.com/a.png) ![b](/static/favicon.svg)\n\n<img src=\"http://example.com/c.gif\" alt=c>",
        );
        assert!(!html.contains("example.com"), "{html}");
        assert_eq!(html.matches("src=\"/img/").count(), 2, "{html}");
        assert!(html.contains("src=\"/static/favicon.svg\""), "{html}");
        // Links to other sites are not images: they stay as they are.
        assert!(
            render("[x](https://example.com/a.png)").contains("href=\"https://example.com/a.png\"")
        );
    }

    #[test]
    fn excerpts_are_plain_and_cut_at_a_word() {
        assert_eq!(
            excerpt("# Hi\n\nSome **bold** text", 100),
            "Hi Some bold text"
        );
        assert_eq!(excerpt("one two three four", 9), "one two…");
    }
}
