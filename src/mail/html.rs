//! The HTML rendition of a plain-text message: what mail clients show, with its web addresses
//! as links (a bare URL in a text part is a link only if the client guesses so), and what the
//! dev mailbox shows.
//!
//! Messages are written as plain text, which stays the first part and the one stored. The HTML
//! is made from it on the way out, never written by hand: every character of the text is
//! escaped, and the only markup added is paragraphs, line breaks and `<a href>` around the
//! `http://` and `https://` addresses, so a title of a user's choosing cannot bring markup in.

/// `text` as escaped HTML, with its web addresses as links; line breaks are kept as they are
/// (for a `<pre>`).
pub fn linked(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = next_url(rest) {
        escape_into(&mut out, &rest[..start]);
        let url = url_at(&rest[start..]);
        out.push_str("<a href=\"");
        escape_into(&mut out, url);
        out.push_str("\">");
        escape_into(&mut out, url);
        out.push_str("</a>");
        rest = &rest[start + url.len()..];
    }
    escape_into(&mut out, rest);
    out
}

/// `text` as an HTML document for a mail's HTML part: a paragraph per blank-line-separated
/// block, `<br>` for the line breaks within one, web addresses as links.
pub fn document(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.trim_matches(['\n', '\r']))
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("<p>{}</p>", linked(p).replace('\n', "<br>\n")))
        .collect();
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body>\n{}\n</body></html>\n",
        paragraphs.join("\n")
    )
}

/// Where the next `http://` or `https://` address starts, if one does at the start of a word.
fn next_url(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("http") {
        let at = from + found;
        let tail = &text[at..];
        let starts_word = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let scheme = ["https://", "http://"]
            .into_iter()
            .find(|scheme| tail.starts_with(*scheme));
        if starts_word && scheme.is_some_and(|scheme| url_at(tail).len() > scheme.len()) {
            return Some(at);
        }
        from = at + "http".len();
    }
    None
}

/// The address at the start of `text`: up to a space or a character no address ends a sentence
/// with (a final `.`, `,`, `)`, a closing quote… belongs to the sentence, not the address).
fn url_at(text: &str) -> &str {
    let end = text
        .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '“' | '”' | '«' | '»'))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '\'', '’'])
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{document, linked};

    #[test]
    fn addresses_become_links_and_everything_else_is_escaped() {
        assert_eq!(
            linked("your post “<b>Hi</b>” is published:\nhttps://example.com/posts/hi.\n"),
            "your post “&lt;b&gt;Hi&lt;/b&gt;” is published:\n\
             <a href=\"https://example.com/posts/hi\">https://example.com/posts/hi</a>.\n"
        );
        assert_eq!(
            linked("see (http://a.b/c?x=1&y=\"2\") or xhttp://no, https:// alone"),
            "see (<a href=\"http://a.b/c?x=1&amp;y=\">http://a.b/c?x=1&amp;y=</a>&quot;2&quot;) \
             or xhttp://no, https:// alone"
        );
    }

    #[test]
    fn the_document_has_a_paragraph_per_block() {
        let html = document("Hello ada,\n\nline one\nhttp://h/x\n\n— Hearth\n");
        assert!(html.contains("<p>Hello ada,</p>"), "{html}");
        assert!(
            html.contains("<p>line one<br>\n<a href=\"http://h/x\">http://h/x</a></p>"),
            "{html}"
        );
        assert!(html.contains("<p>— Hearth</p>"), "{html}");
    }
}
