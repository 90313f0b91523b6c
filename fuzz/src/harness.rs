//! The bodies of the parser fuzz targets, shared by cargo-fuzz (`fuzz/fuzz_targets/*.rs`, the
//! long runs) and `cargo test` (`tests/api/parser_fuzz.rs`, which includes this file by path
//! and replays the corpus plus a few thousand mutated inputs), so the two cannot drift.
//!
//! Each function takes any bytes and panics only on a bug: a parser that panics, or an answer
//! that breaks the parser's promise (an accepted cron expression with no later occurrence
//! than the time asked, an upload error that names a line the file does not have, sanitised
//! HTML with a script in it, a stored Yjs update the document then cannot be rebuilt from).

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use chrono::{DateTime, Offset, Utc};
use hearth::{
    accounts::Email,
    cache::CacheKey,
    channels::{ChannelName, GroupName},
    chat::{consumer as chat, room::mentions},
    documents::{MAX_UPDATE, consumer as docs, crdt},
    gateway::Upstreams,
    jobs::{QueueName, parse_queues, schedule},
    publishing::{
        images::ImageSigner,
        markdown,
        post::{Body, Slug, Title},
    },
    uploads::import::{self, FileError, Rejection},
    web::auth::Username,
};

/// A target's body: any bytes in, a panic only on a bug.
pub type Target = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("cron", cron),
    ("config", config),
    ("names", names),
    ("csv_import", csv_import),
    ("chat_frame", chat_frame),
    ("doc_frame", doc_frame),
    ("yrs_update", yrs_update),
    ("markdown", markdown),
];

/// Times a schedule is asked about when the input names none: an ordinary day, a night the
/// clocks spring forward (Paris) and one they fall back (New York), a leap day.
const TIMES: [i64; 4] = [
    1_767_225_600, // 2026-01-01 00:00 UTC
    1_774_745_400, // 2026-03-29 00:50 UTC, Paris springs forward at 01:00
    1_793_511_000, // 2026-11-01 05:30 UTC, New York falls back at 06:00
    1_835_438_400, // 2028-02-29 12:00 UTC
];

/// A cron schedule: the first line is the expression, the second the time zone (UTC when
/// absent), the third a Unix time to ask about (else [`TIMES`]).
pub fn cron(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let expr = lines.next().unwrap_or_default();
    let tz = lines.next().map_or("UTC", str::trim);
    let at: Vec<i64> = match lines.next().and_then(|t| t.trim().parse::<i64>().ok()) {
        // Years 1970 to 2100: far from chrono's limits, and from croner's (5000).
        Some(t) => vec![t.clamp(0, 4_102_444_800)],
        None => TIMES.to_vec(),
    };
    let Ok(every) = schedule::Every::cron(expr, tz) else {
        return;
    };
    let schedule::Every::Cron { cron, tz, .. } = &every else {
        panic!("Every::cron made an interval: {every:?}");
    };
    // The parsed pattern displays to an expression that parses to the same schedule.
    let shown = cron.to_string();
    let again = schedule::Every::cron(&shown, &tz.to_string())
        .unwrap_or_else(|e| panic!("{expr:?} parses, but its display {shown:?} does not: {e}"));
    let schedule::Every::Cron {
        cron: cron_again, ..
    } = &again
    else {
        unreachable!("a cron schedule parses to a cron schedule");
    };
    assert_eq!(
        cron.pattern.to_string(),
        cron_again.pattern.to_string(),
        "{expr:?} displays as {shown:?}, which parses to another pattern"
    );
    for t in at {
        let t = DateTime::<Utc>::from_timestamp(t, 0).expect("a time between 1970 and 2100");
        check_occurrences(&every, t, expr);
    }
}

/// What the maintenance loop relies on: the next occurrence is later than `t` and matches the
/// pattern, and asking at that instant which occurrence is due answers that same occurrence.
fn check_occurrences(every: &schedule::Every, t: DateTime<Utc>, expr: &str) {
    let schedule::Every::Cron { cron, tz, .. } = every else {
        return;
    };
    let Some(next) = every.next_after(t) else {
        return;
    };
    assert!(next > t, "{expr:?} ({tz}): next after {t} is {next}");
    // A time the clocks skip runs when they resume (croner's rule), and that one need not
    // match the pattern: only check occurrences with no change of offset in the hours before.
    let offset = |at: DateTime<Utc>| at.with_timezone(tz).offset().fix();
    if offset(next - chrono::Duration::hours(3)) == offset(next) {
        assert_eq!(
            cron.is_time_matching(&next.with_timezone(tz)).ok(),
            Some(true),
            "{expr:?} ({tz}): the next occurrence after {t}, {next}, does not match the pattern"
        );
    }
    assert_eq!(
        every.due(t, next),
        Some(next),
        "{expr:?} ({tz}): at {next}, the next occurrence after {t}, another one is due"
    );
    if let Some(due) = every.due(t, next + chrono::Duration::hours(1)) {
        assert!(
            due > t && due <= next + chrono::Duration::hours(1),
            "{expr:?} ({tz}): due {due} is outside ({t}, now]"
        );
    }
}

/// The configuration specs read at start-up: `HEARTH_SCHEDULES`, `HEARTH_QUEUES` and
/// `HEARTH_UPSTREAMS`, all from the same text.
pub fn config(data: &[u8]) {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schedules) = schedule::parse_config(spec) {
        for (i, s) in schedules.iter().enumerate() {
            assert!(
                schedules[..i].iter().all(|other| other.name != s.name),
                "schedule {:?} accepted twice in {spec:?}",
                s.name
            );
            let _ = s.every.to_string();
        }
    }
    if let Ok(queues) = parse_queues(spec) {
        assert!(!queues.is_empty(), "no queues accepted from {spec:?}");
        for (i, (queue, slots)) in queues.iter().enumerate() {
            assert!(
                (1..=10_000).contains(slots),
                "{spec:?}: {queue} has {slots}"
            );
            assert!(
                queues[..i].iter().all(|(other, _)| other != queue),
                "{spec:?}: queue {queue} twice"
            );
        }
    }
    if let Ok(upstreams) = Upstreams::parse(spec) {
        check_upstreams(spec, &upstreams);
    }
}

/// The logged form of the upstreams reads back as the same list, with no password in it.
fn check_upstreams(spec: &str, upstreams: &Upstreams) {
    let shown = upstreams.to_string();
    if upstreams.as_slice().is_empty() {
        assert_eq!(shown, "none");
        return;
    }
    let again = Upstreams::parse(&shown)
        .unwrap_or_else(|e| panic!("{spec:?} parses, but its display {shown:?} does not: {e}"));
    assert_eq!(
        upstreams.as_slice().len(),
        again.as_slice().len(),
        "{shown:?}"
    );
    for (before, after) in upstreams.as_slice().iter().zip(again.as_slice()) {
        assert!(!before.timeout().is_zero(), "{spec:?}: a zero timeout");
        assert!(
            matches!(before.url().scheme(), "http" | "https"),
            "{spec:?}"
        );
        assert_eq!(before.name(), after.name(), "{spec:?} shown as {shown:?}");
        assert_eq!(
            before.timeout(),
            after.timeout(),
            "{spec:?} shown as {shown:?}"
        );
        assert!(
            after.url().password().is_none_or(|p| p == "***"),
            "{spec:?} shows a password: {shown:?}"
        );
        assert!(
            after
                .url()
                .query_pairs()
                .all(|(k, v)| !k.eq_ignore_ascii_case("password") || v == "***"),
            "{spec:?} shows a password: {shown:?}"
        );
    }
}

/// The small newtypes parsed at the edge: each accepts only what its rule says, and what it
/// accepts parses again to itself.
pub fn names(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if let Ok(group) = GroupName::parse(raw) {
        assert!(
            (1..=100).contains(&raw.len()) && raw.chars().all(name_char),
            "{raw:?}"
        );
        assert_eq!(group.as_str(), raw);
    }
    if let Ok(channel) = ChannelName::parse(raw) {
        assert!(raw.contains('!') && raw.len() <= 100, "{raw:?}");
        assert!(!channel.instance().contains('!'), "{raw:?}");
    }
    if let Ok(key) = CacheKey::parse(raw) {
        assert!(
            !key.as_str().is_empty() && key.as_str().len() <= 250,
            "{raw:?}"
        );
        assert!(
            !raw.chars().any(|c| c.is_whitespace() || c.is_control()),
            "{raw:?}"
        );
    }
    if let Ok(name) = Username::parse(raw) {
        assert_eq!(name.as_str(), raw.trim());
        assert_eq!(Username::parse(name.as_str()).ok(), Some(name));
    }
    if let Ok(email) = Email::parse(raw) {
        assert_eq!(email.as_str().matches('@').count(), 1, "{raw:?}");
        assert_eq!(Email::parse(email.as_str()).ok(), Some(email));
    }
    if let Ok(queue) = QueueName::parse(raw) {
        assert_eq!(QueueName::parse(queue.as_str()).ok(), Some(queue));
    }
    if let Ok(slug) = Slug::parse(raw) {
        assert_eq!(Slug::parse(slug.as_str()).ok(), Some(slug));
    }
    if let Ok(body) = Body::parse(raw) {
        assert!(!body.as_str().contains("\r\n"), "{raw:?}");
    }
    if let Ok(title) = Title::parse(raw) {
        // Every title makes a slug the post routes accept.
        let slug = Slug::from_title(&title);
        assert!(
            Slug::parse(slug.as_str()).is_ok(),
            "title {raw:?} makes the slug {:?}, which is not one",
            slug.as_str()
        );
        assert!(!matches!(slug.as_str(), "new" | "preview"), "{raw:?}");
    }
}

/// An uploaded CSV file: accepted with as many posts as data rows, or refused with rows and
/// lines that exist in the file.
pub fn csv_import(data: &[u8]) {
    let lines = line_count(data);
    match import::read(data) {
        Ok(posts) => {
            assert!(!posts.is_empty() && posts.len() <= import::MAX_ROWS);
            assert_eq!(posts.len(), data_rows(data), "posts for {data:?}");
            check_positions(data, lines, posts.iter().map(|p| (p.row, p.line)));
        }
        Err(Rejection::Rows { rows, errors }) => {
            assert!(!errors.is_empty() && errors.len() <= rows && rows <= import::MAX_ROWS);
            assert_eq!(rows, data_rows(data), "rows for {data:?}");
            check_positions(data, lines, errors.iter().map(|e| (e.row, e.line)));
            for e in &errors {
                assert!(
                    e.row <= rows as u64 + 1,
                    "row {} of {rows} in {data:?}",
                    e.row
                );
                assert!(!e.message.is_empty());
            }
        }
        Err(Rejection::File(e)) => {
            let _ = e.to_string();
            match e {
                FileError::NotUtf8 { byte, offset, line } => {
                    assert_eq!(data.get(offset), Some(&byte), "{data:?}");
                    assert!(std::str::from_utf8(&data[offset..]).is_err(), "{data:?}");
                    assert!((1..=lines).contains(&line), "line {line} in {data:?}");
                }
                FileError::Nul { offset, line } => {
                    assert_eq!(data.get(offset), Some(&0), "{data:?}");
                    assert!((1..=lines).contains(&line), "line {line} in {data:?}");
                }
                FileError::UnclosedQuote { line } => {
                    assert!((1..=lines).contains(&line), "line {line} in {data:?}");
                }
                _ => {}
            }
        }
    }
}

/// Lines as an editor counts them: ended by `\r\n`, `\n` or a lone `\r` (old Mac files), as
/// the CSV reader ends records.
fn line_count(data: &[u8]) -> u64 {
    let breaks = data
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && data.get(i + 1) != Some(&b'\n')))
        .count();
    breaks as u64 + 1
}

/// Data rows (records after the header) as the CSV reader alone sees them.
fn data_rows(data: &[u8]) -> usize {
    let text = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let records = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text)
        .records()
        .count();
    records.saturating_sub(1)
}

/// Rows are numbered from 2 (the header is 1) in file order, each on a later line than the
/// one before, within the file.
fn check_positions(data: &[u8], lines: u64, positions: impl Iterator<Item = (u64, u64)>) {
    let mut previous = (1, 0);
    for (row, line) in positions {
        assert!(
            row > previous.0,
            "row {row} after row {} in {data:?}",
            previous.0
        );
        assert!(
            line > previous.1,
            "row {row} on line {line} after line {} in {data:?}",
            previous.1
        );
        assert!(
            line <= lines,
            "row {row} on line {line} of {lines} in {data:?}"
        );
        previous = (row, line);
    }
}

/// A text frame on the chat socket, decoded as the socket does, then the body checks.
pub fn chat_frame(data: &[u8]) {
    // WebSocket text frames are UTF-8; the socket refuses others before decoding.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let body = match serde_json::from_str::<chat::Incoming>(text) {
        Ok(chat::Incoming::Send { body, .. } | chat::Incoming::Edit { body, .. }) => body,
        Ok(_) => return,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let Ok(accepted) = chat::parse_body(&body) else {
        let n = body.trim().chars().count();
        assert!(
            n == 0 || n > chat::MAX_MESSAGE,
            "a body of {n} characters refused"
        );
        return;
    };
    assert_eq!(accepted, body.trim());
    assert!((1..=chat::MAX_MESSAGE).contains(&accepted.chars().count()));
    let names = mentions(accepted);
    let lower = accepted.to_ascii_lowercase();
    for (i, name) in names.iter().enumerate() {
        assert!(
            (3..=32).contains(&name.len()),
            "mention {name:?} in {accepted:?}"
        );
        assert!(
            name.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'.' | b'-')),
            "mention {name:?} in {accepted:?}"
        );
        assert!(!names[..i].contains(name), "mention {name:?} twice");
        assert!(
            lower.contains(&format!("@{name}")),
            "mention {name:?} not in {accepted:?}"
        );
    }
}

/// A text frame on the document socket, decoded as the socket does, then what the server does
/// with its base64: a state vector to diff against, or an update to store.
pub fn doc_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<docs::Incoming>(text) {
        Ok(docs::Incoming::Sync { sv }) => {
            if let Ok(vector) = BASE64.decode(sv) {
                check_diff(&vector);
            }
        }
        Ok(docs::Incoming::Update { update, .. }) => {
            if let Ok(bytes) = BASE64.decode(update)
                && bytes.len() <= MAX_UPDATE
            {
                check_update(&bytes);
            }
        }
        Ok(docs::Incoming::Awareness { cursor }) => {
            // Forwarded as is: it only has to serialise again.
            serde_json::to_string(&cursor).expect("a JSON value serialises");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Raw bytes as a Yjs update and as a state vector: the decoding under `doc_frame` without the
/// JSON and base64 around it, where the fuzzer finds its way faster.
pub fn yrs_update(data: &[u8]) {
    check_update(data);
    check_diff(data);
}

/// A one-line document, "base text", written by Yjs (client 7): what fuzzed updates meet.
const BASE: &[u8] = include_bytes!("../corpus/yrs_update/base-text");

/// What the server promises of an update it accepts against the document it joins
/// (`State::accepts`, here for an empty document and for `BASE`) and stores: the document
/// still loads with it, in any order and twice, and a compaction (the state encoded as one
/// update) keeps the text.
fn check_update(bytes: &[u8]) {
    let load = |parts: &[&[u8]]| {
        crdt::State::from_updates(parts.iter().copied())
            .unwrap_or_else(|e| panic!("an accepted update breaks loading: {e}; update {bytes:?}"))
    };
    let mut accepted = Vec::new();
    if crdt::check_update(bytes).is_ok() {
        accepted.push(load(&[bytes]));
    }
    if load(&[BASE]).accepts(bytes).is_ok() {
        accepted.push(load(&[BASE, bytes]));
        // The other order must load too. Its text may differ: yrs 0.28 does not converge for
        // some malformed updates (fuzz/corpus/doc_frame/order-dependent-update), a known
        // finding this harness does not fail on, so that it goes on looking for others.
        load(&[bytes, BASE, bytes]);
    }
    for state in &accepted {
        let snapshot = state.encode();
        assert_eq!(
            load(&[&snapshot]).text(),
            state.text(),
            "a compaction changes the text; update {bytes:?}"
        );
    }
}

/// A state vector from a client: the server answers with a diff the client can apply.
fn check_diff(vector: &[u8]) {
    let state = crdt::State::from_updates([BASE]).expect("the base update loads");
    if let Ok(diff) = state.diff(vector) {
        crdt::check_update(&diff).expect("a diff the server sends decodes");
        crdt::State::from_updates([diff.as_slice()]).expect("a diff the server sends applies");
    }
}

/// A post body: rendered and sanitised, with nothing left that runs script.
pub fn markdown(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let html = markdown::render(&text, &ImageSigner::from_secret(b"fuzz"));
    check_safe_html(&text, &html);
    let excerpt = markdown::excerpt(&text, 160);
    assert!(excerpt.chars().count() <= 161, "excerpt {excerpt:?}");
}

/// The sanitiser's output (html5ever's serialiser: text escapes `<`, attribute values are in
/// double quotes with `"` escaped) has no script element, no event handler attribute and no
/// URL with a scheme that runs code.
fn check_safe_html(markdown: &str, html: &str) {
    let fail = |why: String| -> ! { panic!("{why} in {html:?}, rendered from {markdown:?}") };
    let bytes = html.as_bytes();
    let mut i = 0;
    while let Some(open) = html[i..].find('<') {
        let start = i + open + 1;
        let mut end = start;
        let mut quoted = false;
        while end < bytes.len() && (quoted || bytes[end] != b'>') {
            quoted ^= bytes[end] == b'"';
            end += 1;
        }
        let tag = &html[start..end];
        i = (end + 1).min(html.len());
        if tag.starts_with('/') || tag.starts_with('!') {
            continue;
        }
        let (name, mut rest) = tag.split_at(tag.find([' ', '/']).unwrap_or(tag.len()));
        let name = name.to_ascii_lowercase();
        if matches!(
            name.as_str(),
            "script" | "style" | "iframe" | "object" | "embed" | "form" | "svg" | "math" | "base"
        ) {
            fail(format!("a <{name}> element"));
        }
        loop {
            rest = rest.trim_start_matches([' ', '/']);
            if rest.is_empty() {
                break;
            }
            let name_end = rest.find(['=', ' ', '/']).unwrap_or(rest.len());
            if name_end == 0 {
                fail(format!("an attribute without a name or quotes in <{tag}>"));
            }
            let attribute = rest[..name_end].to_ascii_lowercase();
            rest = &rest[name_end..];
            let value = match rest.strip_prefix("=\"") {
                Some(quoted) => {
                    let close = quoted.find('"').unwrap_or(quoted.len());
                    rest = quoted.get(close + 1..).unwrap_or_default();
                    quoted[..close]
                        .replace("&quot;", "\"")
                        .replace("&amp;", "&")
                }
                None => String::new(),
            };
            if attribute.starts_with("on") || attribute == "style" {
                fail(format!("the attribute {attribute}"));
            }
            if matches!(
                attribute.as_str(),
                "href" | "src" | "srcset" | "action" | "formaction" | "xlink:href" | "cite"
            ) {
                // Browsers drop tabs and line breaks from URLs and trim control characters
                // and spaces around them before reading the scheme.
                let url: String = value
                    .chars()
                    .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                    .collect::<String>()
                    .trim_matches(|c: char| c <= ' ')
                    .to_ascii_lowercase();
                if ["javascript:", "vbscript:", "data:"]
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    fail(format!("{attribute}={value:?}"));
                }
            }
        }
    }
    if html.to_ascii_lowercase().contains("<script") {
        fail("<script".into());
    }
}
