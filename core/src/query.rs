//! The search query language.
//!
//! ```text
//! kids on a red sled                  free text (the default, semantic mode)
//! sem: beach at dusk                  the same; `sem:` is accepted and ignored
//! beach at dusk -people -"tour bus"   negative words and phrases
//! 2:"golden retriever" on grass       a weighted phrase (weight 2; plain text weighs 1)
//! album:Trips  album:"Summer 2024"    only photos in that album (the folder by default)
//! camera:"Pixel 8"                    only photos from that camera (substring, any case)
//! after:2024-03-01  before:2024-04    taken on or after / strictly before (day, month or year)
//! like:01ab23cd45ef6789              image-by-example, combinable with text
//! ```
//!
//! A key that is not one of the above (`note:`, `16:9`) is plain text. A malformed query is an
//! error that says where (a character offset) and how to fix it.

use std::fmt;

use serde::Serialize;

use crate::photo::PhotoId;

/// The largest weight a term may carry.
pub const MAX_WEIGHT: f32 = 100.0;

/// A text the encoder embeds, with how much it counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightedText {
    /// The words, as typed (quotes removed).
    pub text: String,
    /// Relative importance, in (0, [`MAX_WEIGHT`]]; plain text weighs 1.
    pub weight: f32,
}

/// A calendar day (proleptic Gregorian), the unit of `after:` and `before:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Date {
    /// Year, 1 to 9999.
    pub year: u16,
    /// Month, 1 to 12.
    pub month: u8,
    /// Day of the month, 1 to its length.
    pub day: u8,
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// What a search asks for, ready for the search flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ParsedQuery {
    /// Texts the results should match; plain words form one text of weight 1.
    pub positive: Vec<WeightedText>,
    /// Texts the results should not match.
    pub negative: Vec<WeightedText>,
    /// Photo ids whose images the results should resemble (`like:`), in the order given.
    pub like: Vec<String>,
    /// Only photos in this album.
    pub album: Option<String>,
    /// Only photos whose camera contains this (case-insensitive).
    pub camera: Option<String>,
    /// Only photos taken on or after the start of this day.
    pub taken_from: Option<Date>,
    /// Only photos taken before the start of this day.
    pub taken_until: Option<Date>,
}

impl ParsedQuery {
    /// What a reranker is asked about: the texts the results should match, joined by ", "
    /// (empty for a query of examples or filters only).
    pub fn rerank_text(&self) -> String {
        self.positive
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the query ranks by anything (text or an example image), as opposed to filters
    /// only.
    pub fn has_ranking(&self) -> bool {
        !self.positive.is_empty() || !self.negative.is_empty() || !self.like.is_empty()
    }
}

/// A query that cannot be parsed: where, what and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{message} (at character {position}). {hint}")]
pub struct QueryError {
    /// Offset of the offending part, in characters from the start of the query.
    pub position: usize,
    /// What is wrong.
    pub message: String,
    /// What to type instead.
    pub hint: String,
}

/// The longest query accepted, in characters.
pub const MAX_QUERY_CHARS: usize = 1000;

/// The most terms (words, phrases, filters, `-negations`, `like:` examples) a query may have:
/// each text and example is embedded and searched, so the work a query asks for stays bounded.
pub const MAX_TERMS: usize = 32;

/// Parses a query in the language described in the module documentation.
pub fn parse(query: &str) -> Result<ParsedQuery, QueryError> {
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(error(
            MAX_QUERY_CHARS,
            format!("the query is longer than {MAX_QUERY_CHARS} characters"),
            "shorten it; a few words describe a photo best",
        ));
    }
    if let Some(at) = query.chars().position(|c| c == '\0') {
        return Err(error(
            at,
            "the query has a NUL character",
            "remove it; a few words describe a photo best",
        ));
    }
    let mut parser = Parser {
        chars: query.chars().collect(),
        at: 0,
    };
    let mut parsed = ParsedQuery::default();
    let mut plain: Vec<String> = Vec::new();
    parser.skip_space();
    if parser.rest_starts_with("sem:") {
        parser.at += 4;
    }
    let mut terms = 0;
    loop {
        parser.skip_space();
        let Some(first) = parser.peek() else { break };
        let start = parser.at;
        terms += 1;
        if terms > MAX_TERMS {
            return Err(error(
                start,
                format!("the query has more than {MAX_TERMS} terms"),
                "a few words describe a photo best: drop some words, filters or -terms",
            ));
        }
        if first == '-' && parser.peek_at(1).is_some_and(|c| !c.is_whitespace()) {
            parser.at += 1;
            let text = parser.word_or_phrase()?;
            parsed.negative.push(WeightedText { text, weight: 1.0 });
            continue;
        }
        if first == '"' {
            plain.push(parser.phrase()?);
            continue;
        }
        let word = parser.bare_word();
        let word_end = parser.at;
        let Some((key, value_start)) = word
            .split_once(':')
            .map(|(k, _)| (k, start + k.chars().count() + 1))
        else {
            plain.push(word);
            continue;
        };
        // Known keys read their value from just after the colon (it may be a quoted phrase).
        parser.at = value_start;
        match key.to_ascii_lowercase().as_str() {
            "album" => {
                parsed.album =
                    Some(parser.required_value("album", "album:Trips or album:\"Summer 2024\"")?)
            }
            "camera" => {
                parsed.camera = Some(parser.required_value("camera", "camera:\"Pixel 8\"")?)
            }
            "after" => parsed.taken_from = Some(parser.date("after")?),
            "before" => parsed.taken_until = Some(parser.date("before")?),
            "like" => {
                let id = parser.bare_word();
                if id.parse::<PhotoId>().is_err() {
                    return Err(error(
                        value_start,
                        "like: needs a photo id (16 hexadecimal digits)",
                        "write like:<photo id>, e.g. the id shown under a search result",
                    ));
                }
                parsed.like.push(id);
            }
            _ => match parse_weight(key) {
                Some(weight) if parser.peek().is_some_and(|c| c == '"' || c.is_alphabetic()) => {
                    if !(weight > 0.0 && weight <= MAX_WEIGHT) {
                        return Err(error(
                            start,
                            format!("the weight {key} is out of range"),
                            format!(
                                "use a weight above 0 and at most {MAX_WEIGHT}, like 2:\"golden retriever\""
                            ),
                        ));
                    }
                    let text = parser.word_or_phrase()?;
                    parsed.positive.push(WeightedText { text, weight });
                }
                _ => {
                    parser.at = word_end;
                    plain.push(word);
                }
            },
        }
    }
    if !plain.is_empty() {
        parsed.positive.insert(
            0,
            WeightedText {
                text: plain.join(" "),
                weight: 1.0,
            },
        );
    }
    if let (Some(from), Some(until)) = (parsed.taken_from, parsed.taken_until)
        && from >= until
    {
        return Err(error(
            0,
            format!("after:{from} is not before before:{until}, so nothing can match"),
            "swap the dates, or widen the range",
        ));
    }
    if !parsed.has_ranking()
        && parsed.album.is_none()
        && parsed.camera.is_none()
        && parsed.taken_from.is_none()
        && parsed.taken_until.is_none()
    {
        return Err(error(
            0,
            "the query is empty",
            "describe the photo, e.g. kids on a red sled",
        ));
    }
    Ok(parsed)
}

/// The JSON Schema `format` of a search's query: a text in this language that parses with
/// [`parse_search`].
pub const SEARCH_FORMAT: &str = "glimpse-search-query";
/// The JSON Schema `format` of a browse's filters: a text that parses with [`parse_filters`].
pub const FILTERS_FORMAT: &str = "glimpse-filters";

/// The JSON Schema of a search's query: a non-blank string of at most [`MAX_QUERY_CHARS`]
/// characters without NUL in [`SEARCH_FORMAT`].
pub struct SearchText;

crate::inline_schema!(SearchText, {
    query_schema(
        1,
        Some(r"^[^\x00]*[^\s\x00][^\x00]*$"),
        SEARCH_FORMAT,
        "A query in Glimpse's query language: words (kids on a red sled), -word and \
     -\"a phrase\" to leave out, 2:\"a phrase\" to weigh, album:, camera:, after:YYYY[-MM[-DD]], \
     before:…, like:<photo id>; at least one thing to look for, at most 32 terms. A query that \
     does not parse is a 400 `invalid_query` that says where (`position`) and how to fix it \
     (`hint`).",
    )
});

/// The JSON Schema of a browse's filters: [`FILTERS_FORMAT`], blank for every photo.
pub struct FiltersText;

crate::inline_schema!(FiltersText, {
    query_schema(
        0,
        None,
        FILTERS_FORMAT,
        "Filters in Glimpse's query language: album:, camera:, after:YYYY[-MM[-DD]], before:…; \
     no words to rank by. Filters that do not parse are a 400 `invalid_query` that says where \
     (`position`) and how to fix them (`hint`).",
    )
});

fn query_schema(
    min_length: u32,
    pattern: Option<&str>,
    format: &str,
    description: &str,
) -> schemars::schema::Schema {
    let validation = schemars::schema::StringValidation {
        min_length: Some(min_length),
        max_length: Some(MAX_QUERY_CHARS as u32),
        pattern: pattern.map(str::to_owned),
    };
    crate::text_schema(validation, Some(format), description)
}

/// Parses a search's query: [`parse`], and it must rank by something (words, `-terms` or
/// `like:`), not filter only.
pub fn parse_search(query: &str) -> Result<ParsedQuery, QueryError> {
    let parsed = parse(query)?;
    if !parsed.has_ranking() {
        return Err(error(
            0,
            "the query has filters but nothing to look for",
            "add words that describe the photo, or like:<photo id>, or list the photos the \
             filters pass with GET /api/photos?q=…",
        ));
    }
    Ok(parsed)
}

/// Parses the filters of a browse: [`parse`] without ranking terms; blank for every photo.
pub fn parse_filters(query: &str) -> Result<ParsedQuery, QueryError> {
    if query.trim().is_empty() {
        return Ok(ParsedQuery::default());
    }
    let parsed = parse(query)?;
    if parsed.has_ranking() {
        return Err(error(
            0,
            "browsing takes filters only (album:, camera:, after:, before:)",
            "drop the words, -terms and like:, or search to rank by them",
        ));
    }
    Ok(parsed)
}

fn error(position: usize, message: impl Into<String>, hint: impl Into<String>) -> QueryError {
    QueryError {
        position,
        message: message.into(),
        hint: hint.into(),
    }
}

fn parse_weight(key: &str) -> Option<f32> {
    let starts_like_number = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.');
    starts_like_number
        .then(|| key.parse::<f32>().ok())
        .flatten()
        .filter(|w| w.is_finite())
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn rest_starts_with(&self, prefix: &str) -> bool {
        prefix
            .chars()
            .enumerate()
            .all(|(i, c)| self.peek_at(i).is_some_and(|d| d.eq_ignore_ascii_case(&c)))
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    /// Characters up to the next white space or quote.
    fn bare_word(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(|c| !c.is_whitespace() && c != '"') {
            self.at += 1;
        }
        self.chars[start..self.at].iter().collect()
    }

    /// A double-quoted phrase; the cursor is on the opening quote.
    fn phrase(&mut self) -> Result<String, QueryError> {
        let open = self.at;
        self.at += 1;
        let start = self.at;
        while self.peek().is_some_and(|c| c != '"') {
            self.at += 1;
        }
        if self.peek().is_none() {
            return Err(error(
                open,
                "this phrase has no closing quote",
                "close it with a double quote: \"golden retriever\"",
            ));
        }
        let text: String = self.chars[start..self.at].iter().collect();
        self.at += 1;
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            return Err(error(
                open,
                "this phrase is empty",
                "put words between the quotes",
            ));
        }
        Ok(text)
    }

    fn word_or_phrase(&mut self) -> Result<String, QueryError> {
        if self.peek() == Some('"') {
            return self.phrase();
        }
        let start = self.at;
        let word = self.bare_word();
        if word.is_empty() {
            return Err(error(
                start,
                "a word or phrase is missing here",
                "write -word or -\"a phrase\"",
            ));
        }
        Ok(word)
    }

    fn required_value(&mut self, key: &str, example: &str) -> Result<String, QueryError> {
        let start = self.at;
        let value = if self.peek() == Some('"') {
            self.phrase()?
        } else {
            self.bare_word()
        };
        if value.is_empty() {
            return Err(error(
                start,
                format!("{key}: needs a value"),
                format!("write {example}"),
            ));
        }
        Ok(value)
    }

    /// `YYYY-MM-DD`, `YYYY-MM` or `YYYY`; a month or a year means its first day, for `after:`
    /// and `before:` alike (so `after:2024-03 before:2024-04` is March 2024).
    fn date(&mut self, key: &str) -> Result<Date, QueryError> {
        let start = self.at;
        let text = self.bare_word();
        let invalid = || {
            error(
                start,
                format!("{key}: needs a date, not {text:?}"),
                format!("write {key}:2024-03-15, {key}:2024-03 or {key}:2024"),
            )
        };
        let parts: Vec<&str> = text.split('-').collect();
        if parts.is_empty()
            || parts.len() > 3
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid());
        }
        let number = |i: usize, default: u16| {
            parts
                .get(i)
                .map_or(Some(default), |p| p.parse::<u16>().ok())
        };
        let (Some(year), Some(month), Some(day)) = (number(0, 0), number(1, 1), number(2, 1))
        else {
            return Err(invalid());
        };
        if parts[0].len() != 4 || !(1..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(invalid());
        }
        let month = month as u8;
        if day == 0 || day > u16::from(days_in_month(year, month)) {
            return Err(invalid());
        }
        Ok(Date {
            year,
            month,
            day: day as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str, weight: f32) -> WeightedText {
        WeightedText {
            text: text.into(),
            weight,
        }
    }

    #[test]
    fn plain_words_form_one_text() {
        let q = parse("  kids on a red   sled ").unwrap();
        assert_eq!(q.positive, vec![text("kids on a red sled", 1.0)]);
        assert_eq!(parse("sem: kids on a red sled").unwrap(), q);
        assert_eq!(parse("SEM:kids on a red sled").unwrap(), q);
    }

    #[test]
    fn negative_words_and_phrases() {
        let q = parse("beach at dusk -people -\"tour bus\"").unwrap();
        assert_eq!(q.positive, vec![text("beach at dusk", 1.0)]);
        assert_eq!(q.negative, vec![text("people", 1.0), text("tour bus", 1.0)]);
        // A lone dash is punctuation, not a negation.
        assert_eq!(
            parse("beach - sunset").unwrap().positive,
            vec![text("beach - sunset", 1.0)]
        );
    }

    #[test]
    fn weighted_terms_keep_their_weight_and_plain_text_comes_first() {
        let q = parse("2:\"golden retriever\" on grass 0.5:snow").unwrap();
        assert_eq!(
            q.positive,
            vec![
                text("on grass", 1.0),
                text("golden retriever", 2.0),
                text("snow", 0.5)
            ]
        );
    }

    #[test]
    fn unknown_keys_and_numbers_with_colons_are_plain_text() {
        let q = parse("note: meeting at 10:30 in 16:9").unwrap();
        assert_eq!(
            q.positive,
            vec![text("note: meeting at 10:30 in 16:9", 1.0)]
        );
    }

    #[test]
    fn filters_and_examples() {
        let q = parse("album:\"Summer 2024\" camera:Pixel after:2024-03 before:2024-04-15 like:01ab23cd45ef6789 whiteboard")
            .unwrap();
        assert_eq!(q.album.as_deref(), Some("Summer 2024"));
        assert_eq!(q.camera.as_deref(), Some("Pixel"));
        assert_eq!(
            q.taken_from,
            Some(Date {
                year: 2024,
                month: 3,
                day: 1
            })
        );
        assert_eq!(
            q.taken_until,
            Some(Date {
                year: 2024,
                month: 4,
                day: 15
            })
        );
        assert_eq!(q.like, vec!["01ab23cd45ef6789".to_owned()]);
        assert_eq!(q.positive, vec![text("whiteboard", 1.0)]);
        // Filters alone are a valid query (browse); an example alone too.
        assert!(!parse("album:Trips").unwrap().has_ranking());
        assert!(parse("like:0123456789abcdef").unwrap().has_ranking());
    }

    fn error_at(query: &str) -> (usize, String) {
        let e = parse(query).unwrap_err();
        assert!(!e.hint.is_empty(), "{query}: no hint");
        (e.position, e.to_string())
    }

    #[test]
    fn malformed_queries_say_where_and_how_to_fix() {
        let (at, message) = error_at("red \"sled");
        assert_eq!(at, 4);
        assert!(message.contains("closing quote"), "{message}");
        assert_eq!(error_at("beach after:yesterday").0, 12);
        assert_eq!(error_at("after:2024-02-30").0, 6);
        assert_eq!(error_at("after:2024-13").0, 6);
        assert_eq!(error_at("after:24-01-01").0, 6);
        assert_eq!(error_at("dogs like:").0, 10);
        assert_eq!(error_at("dogs like:a/b").0, 10);
        assert_eq!(error_at("dogs like:abc").0, 10);
        assert_eq!(error_at("dogs\0cats").0, 4);
        assert_eq!(error_at("album: dogs").0, 6);
        assert_eq!(error_at("0:cat").0, 0);
        assert_eq!(error_at("500:cat").0, 0);
        assert_eq!(error_at("-\"\"").0, 1);
        assert!(
            error_at("after:2024-05 before:2024-04")
                .1
                .contains("nothing can match")
        );
        assert!(error_at("   ").1.contains("empty"));
        assert!(error_at("sem:").1.contains("empty"));
        let long = "a ".repeat(MAX_QUERY_CHARS);
        assert!(error_at(&long).1.contains("longer than"));
        // 300 short terms: refused at the first one over the limit, whatever their kind.
        let many = vec!["-x"; 300].join(" ");
        let (position, message) = error_at(&many);
        assert!(message.contains("more than 32 terms"), "{message}");
        assert_eq!(position, 32 * "-x ".len(), "the 33rd term");
        assert!(error_at(&"cat ".repeat(33)).1.contains("terms"));
        assert!(parse(&"cat ".repeat(32)).is_ok());
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(error_at("café \"crème").0, 5);
    }

    #[test]
    fn leap_days() {
        assert!(parse("after:2024-02-29").is_ok());
        assert!(parse("after:2023-02-29").is_err());
        assert!(parse("after:2000-02-29").is_ok());
        assert!(parse("after:1900-02-29").is_err());
    }
}
