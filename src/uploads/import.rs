//! Reading a CSV file of posts, with no I/O: the encoding, the header, then every row — all of
//! it checked before anything is written.
//!
//! The format: UTF-8 (a byte-order mark is dropped); fields separated by commas and quoted with
//! `"` when they hold commas, quotes (doubled: `""`) or line breaks; blank lines skipped. The
//! first row names the columns, in any order and case: `title` and `body` (Markdown), and
//! optionally `publish` (`true`/`false`, `yes`/`no`, `1`/`0`; empty means a draft). Titles and
//! bodies follow the editor's rules ([`Title`], [`Body`]).

use serde::{Deserialize, Serialize};

use super::count;
use crate::publishing::post::{Body, Title};

/// Most data rows one file may hold.
pub const MAX_ROWS: usize = 10_000;

/// A valid row: a post to create.
#[derive(Debug)]
pub struct PostRow {
    pub row: u64,
    pub line: u64,
    pub title: Title,
    pub body: Body,
    pub publish: bool,
}

/// A row that cannot become a post, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// The row as a spreadsheet numbers it: the header is row 1 (blank lines not counted).
    pub row: u64,
    /// The line of the file where the row starts (a field with line breaks spans several).
    pub line: u64,
    pub message: String,
}

/// Why a file as a whole cannot be read. The messages are for the person who uploaded it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("The file is empty.")]
    Empty,
    #[error(
        "The file is UTF-16 text. Save it as UTF-8 (“CSV UTF-8” in Excel) and upload it again."
    )]
    Utf16,
    #[error(
        "This is a spreadsheet workbook, not a CSV file. Save it as “CSV UTF-8” and upload that."
    )]
    Workbook,
    #[error(
        "The file is not UTF-8 text: byte 0x{byte:02X} at offset {offset} (line {line}) is not valid UTF-8. Save it as UTF-8 (“CSV UTF-8” in Excel) and upload it again."
    )]
    NotUtf8 { byte: u8, offset: usize, line: u64 },
    #[error(
        "The file has a NUL byte at offset {offset} (line {line}): it is not a text file, or it is UTF-16. Save it as UTF-8 and upload it again."
    )]
    Nul { offset: usize, line: u64 },
    #[error(
        "A quoted field that starts on line {line} is never closed, so the rest of the file would be read into it. Add the closing quote (a quote inside a quoted field is written twice: \"\")."
    )]
    UnclosedQuote { line: u64 },
    #[error(
        "The first row must name the columns — title, body and optionally publish — but it reads {found}. Add a header row."
    )]
    MissingHeader { found: String },
    #[error("Column {column} of the header has no name; name it title, body or publish.")]
    UnnamedColumn { column: usize },
    #[error("The header names an unknown column, “{0}”; the columns are title, body and publish.")]
    UnknownColumn(String),
    #[error("The header names the column {0} twice.")]
    DuplicateColumn(String),
    #[error("The header has no {0} column.")]
    MissingColumn(&'static str),
    #[error("The file has a header but no rows.")]
    NoRows,
    #[error(
        "The file has more than {} rows; split it into smaller files.",
        super::thousands(MAX_ROWS)
    )]
    TooManyRows,
}

/// Why a file cannot be imported: as a whole, or because of some rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    File(FileError),
    Rows {
        /// Data rows in the file.
        rows: usize,
        /// Every row that cannot become a post, in file order.
        errors: Vec<RowError>,
    },
}

impl From<FileError> for Rejection {
    fn from(e: FileError) -> Self {
        Self::File(e)
    }
}

/// Reads a whole file: every row is a valid post, or nothing is.
pub fn read(bytes: &[u8]) -> Result<Vec<PostRow>, Rejection> {
    let text = decode(bytes)?;
    let lines = Lines::new(text);
    // The CSV reader takes an unclosed quote as a field running to the end of the file, which
    // could even have the right number of fields: catch it before, with the line it opens on.
    if let Some(at) = unclosed_quote(text) {
        return Err(FileError::UnclosedQuote {
            line: lines.line_of(at),
        }
        .into());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        // Rows with the wrong number of fields are reported with the others, not as a stop.
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let columns = match records.next() {
        Some(Ok(header)) => Columns::parse(&header)?,
        // The text is valid UTF-8 and not blank, so the reader finds a first record.
        _ => return Err(FileError::Empty.into()),
    };
    let (mut posts, mut errors, mut rows) = (Vec::new(), Vec::new(), 0);
    for record in records {
        rows += 1;
        if rows > MAX_ROWS {
            return Err(FileError::TooManyRows.into());
        }
        let (position, result) = match &record {
            Ok(record) => (record.position(), columns.post(record)),
            // Cannot happen on valid UTF-8 with flexible rows; reported rather than assumed.
            Err(e) => (
                e.position(),
                Err("This row cannot be read as CSV.".to_owned()),
            ),
        };
        let (row, line) = match position {
            Some(p) => (p.record() + 1, lines.line_of(skip_newlines(text, p.byte()))),
            None => (rows as u64 + 1, 0),
        };
        match result {
            Ok((title, body, publish)) => posts.push(PostRow {
                row,
                line,
                title,
                body,
                publish,
            }),
            Err(message) => errors.push(RowError { row, line, message }),
        }
    }
    if rows == 0 {
        return Err(FileError::NoRows.into());
    }
    if !errors.is_empty() {
        return Err(Rejection::Rows { rows, errors });
    }
    Ok(posts)
}

/// The file's text: UTF-8 without a byte-order mark, with no NUL (Postgres text cannot hold
/// one) and not blank.
fn decode(bytes: &[u8]) -> Result<&str, FileError> {
    if bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF]) {
        return Err(FileError::Utf16);
    }
    // xlsx and ods are zip archives; xls is an OLE compound file.
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Err(FileError::Workbook);
    }
    let (bom, rest) = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (3, rest),
        None => (0, bytes),
    };
    let text = std::str::from_utf8(rest).map_err(|e| {
        let offset = bom + e.valid_up_to();
        FileError::NotUtf8 {
            byte: bytes[offset],
            offset,
            line: line_at(bytes, offset),
        }
    })?;
    if let Some(at) = text.find('\0') {
        return Err(FileError::Nul {
            offset: bom + at,
            line: line_at(bytes, bom + at),
        });
    }
    if text.trim().is_empty() {
        return Err(FileError::Empty);
    }
    Ok(text)
}

/// The line (from 1) of byte `offset`, for the one error that needs it.
fn line_at(bytes: &[u8], offset: usize) -> u64 {
    line_starts(bytes)
        .take_while(|&start| start <= offset)
        .count() as u64
        + 1
}

/// Where each line but the first starts: after `\n`, and after a `\r` not followed by `\n`
/// (old Mac files end lines with `\r` alone, and the CSV reader ends records there too).
fn line_starts(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes.iter().enumerate().filter_map(|(i, &b)| {
        (b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))).then_some(i + 1)
    })
}

/// Where each line starts, to turn the byte offsets the reader reports into lines.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Self(
            std::iter::once(0)
                .chain(line_starts(text.as_bytes()))
                .collect(),
        )
    }

    fn line_of(&self, byte: usize) -> u64 {
        self.0.partition_point(|&start| start <= byte) as u64
    }
}

/// The reader reports a record as starting where the previous one ended, before its line
/// break and any blank lines: the record's own first byte is past them.
fn skip_newlines(text: &str, byte: u64) -> usize {
    let start = usize::try_from(byte).unwrap_or(text.len());
    let skipped = text.get(start..).map_or(0, |rest| {
        rest.len() - rest.trim_start_matches(['\r', '\n']).len()
    });
    start + skipped
}

/// The offset of the opening quote of a quoted field that is never closed, if there is one.
/// Follows the CSV reader's rules: a quote opens a field only at its start, `""` inside a
/// quoted field is a quote, and after the closing quote the field goes on unquoted.
fn unclosed_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut quoted, mut field_start, mut opened) = (false, true, 0);
    let mut i = 0;
    while i < bytes.len() {
        match (quoted, bytes[i]) {
            (true, b'"') if bytes.get(i + 1) == Some(&b'"') => i += 1,
            (true, b'"') => quoted = false,
            (true, _) => {}
            (false, b',' | b'\n' | b'\r') => {
                field_start = true;
                i += 1;
                continue;
            }
            (false, b'"') if field_start => {
                quoted = true;
                opened = i;
            }
            (false, _) => {}
        }
        field_start = false;
        i += 1;
    }
    quoted.then_some(opened)
}

/// Where the header put each column.
#[derive(Debug)]
struct Columns {
    count: usize,
    title: usize,
    body: usize,
    publish: Option<usize>,
}

impl Columns {
    fn parse(header: &csv::StringRecord) -> Result<Self, FileError> {
        let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
        if !names.iter().any(|n| n == "title" || n == "body") {
            return Err(FileError::MissingHeader {
                found: preview(header),
            });
        }
        let (mut title, mut body, mut publish) = (None, None, None);
        for (i, name) in names.iter().enumerate() {
            let slot = match name.as_str() {
                "title" => &mut title,
                "body" => &mut body,
                "publish" => &mut publish,
                "" => return Err(FileError::UnnamedColumn { column: i + 1 }),
                _ => return Err(FileError::UnknownColumn(shorten(header[i].trim(), 40))),
            };
            if slot.replace(i).is_some() {
                return Err(FileError::DuplicateColumn(name.clone()));
            }
        }
        Ok(Self {
            count: names.len(),
            title: title.ok_or(FileError::MissingColumn("title"))?,
            body: body.ok_or(FileError::MissingColumn("body"))?,
            publish,
        })
    }

    /// The post in `record`, or every problem with it in one message.
    fn post(&self, record: &csv::StringRecord) -> Result<(Title, Body, bool), String> {
        if record.len() != self.count {
            let hint = if record.len() > self.count {
                " A field that holds a comma needs quotes around it: \"a, b\"."
            } else {
                ""
            };
            return Err(format!(
                "The row has {} where the header has {}.{hint}",
                count(record.len(), "field"),
                self.count
            ));
        }
        let mut problems = Vec::new();
        let title = Title::parse(&record[self.title])
            .map_err(|e| problems.push(e))
            .ok();
        let body = Body::parse(&record[self.body])
            .map_err(|e| problems.push(e))
            .ok();
        let publish = match self.publish {
            None => Some(false),
            Some(i) => parse_flag(&record[i]).map_err(|e| problems.push(e)).ok(),
        };
        match (title, body, publish) {
            (Some(title), Some(body), Some(publish)) => Ok((title, body, publish)),
            _ => Err(problems.join(" ")),
        }
    }
}

fn parse_flag(raw: &str) -> Result<bool, String> {
    match raw.trim().to_lowercase().as_str() {
        "true" | "yes" | "y" | "1" => Ok(true),
        "false" | "no" | "n" | "0" | "" => Ok(false),
        _ => Err(format!(
            "publish is “{}”; write true or false.",
            shorten(raw.trim(), 40)
        )),
    }
}

/// The first fields of a row, quoted, for a message.
fn preview(record: &csv::StringRecord) -> String {
    let mut shown: Vec<String> = record
        .iter()
        .take(3)
        .map(|f| format!("“{}”", shorten(f.trim(), 30)))
        .collect();
    if record.len() > 3 {
        shown.push("…".into());
    }
    shown.join(", ")
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_error(bytes: &[u8]) -> FileError {
        match read(bytes) {
            Err(Rejection::File(e)) => e,
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    fn row_errors(bytes: &[u8]) -> Vec<RowError> {
        match read(bytes) {
            Err(Rejection::Rows { errors, .. }) => errors,
            other => panic!("expected row errors, got {other:?}"),
        }
    }

    #[test]
    fn reads_posts_with_quotes_line_breaks_and_a_bom() {
        let file = "\u{feff}Title,Body,Publish\r\nHello,\"Line one\r\nline \"\"two\"\", with a comma\",yes\r\n\r\nSecond,plain,\r\n";
        let posts = read(file.as_bytes()).unwrap();
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].title.as_str(), "Hello");
        assert_eq!(
            posts[0].body.as_str(),
            "Line one\nline \"two\", with a comma"
        );
        assert!(posts[0].publish);
        assert_eq!((posts[0].row, posts[0].line), (2, 2));
        assert_eq!(posts[1].title.as_str(), "Second");
        assert!(!posts[1].publish);
        // After a field with a line break and a blank line.
        assert_eq!((posts[1].row, posts[1].line), (3, 5));
    }

    #[test]
    fn lines_may_end_with_a_carriage_return_alone() {
        // "CSV (Macintosh)" files: the reader ends records at a lone \r, so lines end there too.
        let errors = row_errors(b"title,body\rok,row\r,no title\r\xe2\x80\x8b,b\r\n,x\n");
        let found: Vec<(u64, u64)> = errors.iter().map(|e| (e.row, e.line)).collect();
        assert_eq!(found, [(3, 3), (5, 5)]);
        assert_eq!(
            file_error(b"title,body\ra,b\r\xff,c\r"),
            FileError::NotUtf8 {
                byte: 0xFF,
                offset: 15,
                line: 3
            }
        );
    }

    #[test]
    fn columns_may_come_in_any_order() {
        let posts = read(b"body,title\nthe body,the title\n").unwrap();
        assert_eq!(posts[0].title.as_str(), "the title");
        assert_eq!(posts[0].body.as_str(), "the body");
    }

    #[test]
    fn invalid_utf8_names_its_offset_and_line() {
        assert_eq!(
            file_error(b"title,body\nCaf\xe9,latin-1\n"),
            FileError::NotUtf8 {
                byte: 0xE9,
                offset: 14,
                line: 2
            }
        );
        let message = file_error(b"\xEF\xBB\xBFtitle,body\n\xff,x\n").to_string();
        assert!(
            message.contains("byte 0xFF at offset 14 (line 2)"),
            "{message}"
        );
    }

    #[test]
    fn other_encodings_and_binaries_are_named() {
        assert_eq!(file_error(b"\xff\xfet\0i\0"), FileError::Utf16);
        assert_eq!(file_error(b"PK\x03\x04rest"), FileError::Workbook);
        assert_eq!(
            file_error(b"title,body\na\0,b\n"),
            FileError::Nul {
                offset: 12,
                line: 2
            }
        );
        assert_eq!(file_error(b""), FileError::Empty);
        assert_eq!(file_error(b" \n\r\n"), FileError::Empty);
    }

    #[test]
    fn the_header_is_required_and_checked() {
        assert!(matches!(
            file_error(b"Hello,World\nSecond,row\n"),
            FileError::MissingHeader { found } if found == "“Hello”, “World”"
        ));
        assert_eq!(
            file_error(b"title,body,tags\n"),
            FileError::UnknownColumn("tags".into())
        );
        assert_eq!(
            file_error(b"title,body,\na,b,\n"),
            FileError::UnnamedColumn { column: 3 }
        );
        assert_eq!(
            file_error(b"title,Title,body\n"),
            FileError::DuplicateColumn("title".into())
        );
        assert_eq!(file_error(b"title\nx\n"), FileError::MissingColumn("body"));
        assert_eq!(file_error(b"title,body\n"), FileError::NoRows);
    }

    #[test]
    fn an_unclosed_quote_is_found_where_it_opens() {
        assert_eq!(
            file_error(b"title,body\nok,fine\nbad,\"never closed\nnext,row\n"),
            FileError::UnclosedQuote { line: 3 }
        );
        // Doubled quotes inside a quoted field, and quotes inside an unquoted one, are fine.
        assert!(read(b"title,body\n\"a \"\"b\"\"\",c\"d\n").is_ok());
    }

    #[test]
    fn every_bad_row_is_reported_with_its_row_and_line() {
        let long = "x".repeat(201);
        let file = format!(
            "title,body,publish\ngood,row,no\n,empty title,no\n{long},b,no\na,b,c,d\nt,b,maybe\nshort\n"
        );
        let errors = row_errors(file.as_bytes());
        let found: Vec<(u64, u64)> = errors.iter().map(|e| (e.row, e.line)).collect();
        assert_eq!(found, [(3, 3), (4, 4), (5, 5), (6, 6), (7, 7)]);
        assert_eq!(errors[0].message, "A post needs a title.");
        assert!(errors[1].message.contains("limit is 200"), "{errors:?}");
        assert!(
            errors[2]
                .message
                .starts_with("The row has 4 fields where the header has 3."),
            "{errors:?}"
        );
        assert_eq!(
            errors[3].message,
            "publish is “maybe”; write true or false."
        );
        assert_eq!(
            errors[4].message,
            "The row has 1 field where the header has 3."
        );
    }

    #[test]
    fn a_row_may_have_several_problems() {
        let body = "b".repeat(crate::publishing::post::MAX_BODY + 1);
        let errors = row_errors(format!("title,body\n ,{body}\n").as_bytes());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .starts_with("A post needs a title. The post is")
        );
    }

    #[test]
    fn at_most_max_rows() {
        let mut file = String::from("title,body\n");
        for i in 0..MAX_ROWS {
            file.push_str(&format!("t{i},b\n"));
        }
        assert_eq!(read(file.as_bytes()).unwrap().len(), MAX_ROWS);
        file.push_str("one,more\n");
        assert_eq!(file_error(file.as_bytes()), FileError::TooManyRows);
    }

    #[test]
    fn shortens_on_characters() {
        assert_eq!(shorten("héllo", 10), "héllo");
        assert_eq!(shorten("héllo", 2), "hé…");
    }
}
