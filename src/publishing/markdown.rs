//! Markdown to safe HTML: pulldown-cmark renders, ammonia removes whatever could run script
//! (raw `<script>`, `on*=` attributes, `javascript:` links) and adds `rel="noopener
//! noreferrer nofollow"` to links. Rendered once when a post is saved, not on every view.
//!
//! Headings go one level down (`#` is an `<h2>`): the post's title is the page's one `<h1>`.

use pulldown_cmark::{Event, HeadingLevel, Options, Parser, Tag, TagEnd, html};

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

/// The sanitised HTML of `markdown`.
pub fn render(markdown: &str) -> String {
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
    ammonia::Builder::default()
        .link_rel(Some("noopener noreferrer nofollow"))
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
    use super::*;

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
    fn excerpts_are_plain_and_cut_at_a_word() {
        assert_eq!(
            excerpt("# Hi\n\nSome **bold** text", 100),
            "Hi Some bold text"
        );
        assert_eq!(excerpt("one two three four", 9), "one two…");
    }
}
