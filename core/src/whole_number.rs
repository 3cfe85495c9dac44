//! Whole numbers as JSON Schema counts them: `20`, and also `20.0` (its `integer` type takes any
//! number without a fraction), in JSON or as query-string text. For `deserialize_with` on the
//! integer fields of request types, so that what a schema-valid client sends is read.

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// Reads a JSON number without a fraction into `T`; a fraction, a negative number, one too
/// large for `T` or a string is an error.
pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    read(deserializer, WholeNumber { text: false })
}

/// [`deserialize`] for an optional query-string field (with `#[serde(default)]`: absent is
/// `None`), where the number is text (`20`, `20.0`).
pub fn option_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    read(deserializer, WholeNumber { text: true }).map(Some)
}

/// [`deserialize`] for a field that may be `null` (`None`); without `#[serde(default)]` it must be
/// there.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    struct Nullable;

    impl<'de> Visitor<'de> for Nullable {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number, 0 or more, or null")
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, inner: D2) -> Result<Self::Value, D2::Error> {
            read(inner, WholeNumber { text: false }).map(Some)
        }
    }

    match deserializer.deserialize_option(Nullable)? {
        None => Ok(None),
        Some(number) => T::try_from(number)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("{number} is too large"))),
    }
}

fn read<'de, D, T>(deserializer: D, visitor: WholeNumber) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    let number = deserializer.deserialize_any(visitor)?;
    T::try_from(number).map_err(|_| D::Error::custom(format!("{number} is too large")))
}

/// Reads numbers, and text too where `text`.
struct WholeNumber {
    text: bool,
}

/// The largest float every whole number up to which is exact.
const EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

impl Visitor<'_> for WholeNumber {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a whole number, 0 or more")
    }

    fn visit_u64<E: Error>(self, value: u64) -> Result<u64, E> {
        Ok(value)
    }

    fn visit_i64<E: Error>(self, value: i64) -> Result<u64, E> {
        u64::try_from(value).map_err(|_| E::custom(format!("{value} is below 0")))
    }

    fn visit_f64<E: Error>(self, value: f64) -> Result<u64, E> {
        if value.fract() == 0.0 && (0.0..=EXACT_FLOAT).contains(&value) {
            Ok(value as u64)
        } else {
            Err(E::custom(format!("{value} is not a whole number from 0")))
        }
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<u64, E> {
        if !self.text {
            return Err(E::custom(format!("`{text}` is text, not a number")));
        }
        match text.parse::<u64>() {
            Ok(value) => Ok(value),
            Err(_) => match text.parse::<f64>() {
                Ok(value) if value.is_finite() => self.visit_f64(value),
                _ => Err(E::custom(format!("`{text}` is not a whole number"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Page {
        #[serde(deserialize_with = "super::deserialize")]
        top_k: u32,
        #[serde(default, deserialize_with = "super::deserialize")]
        offset: usize,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Query {
        #[serde(default, deserialize_with = "super::option_text")]
        limit: Option<usize>,
    }

    #[test]
    fn whole_numbers_are_read_however_they_are_written_and_fractions_refused() {
        for json in [
            r#"{"top_k": 20, "offset": 3}"#,
            r#"{"top_k": 20.0, "offset": 3.0}"#,
        ] {
            let page: Page = serde_json::from_str(json).expect(json);
            assert_eq!(
                page,
                Page {
                    top_k: 20,
                    offset: 3
                }
            );
        }
        for json in [
            r#"{"top_k": 2.5}"#,
            r#"{"top_k": -1}"#,
            r#"{"top_k": 4294967296}"#,
            r#"{"top_k": "7"}"#,
        ] {
            assert!(serde_json::from_str::<Page>(json).is_err(), "{json}");
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Choice {
        #[serde(deserialize_with = "super::nullable")]
        version: Option<u32>,
    }

    #[test]
    fn nullable_numbers_are_whole_numbers_or_null_and_must_be_there() {
        for (json, version) in [
            (r#"{"version": 3}"#, Some(3)),
            (r#"{"version": 3.0}"#, Some(3)),
            (r#"{"version": null}"#, None),
        ] {
            let choice: Choice = serde_json::from_str(json).expect(json);
            assert_eq!(choice.version, version, "{json}");
        }
        for json in [r#"{}"#, r#"{"version": 2.5}"#, r#"{"version": "3"}"#] {
            assert!(serde_json::from_str::<Choice>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn query_strings_give_whole_numbers_as_text() {
        for (text, limit) in [("", None), ("limit=7", Some(7)), ("limit=7.0", Some(7))] {
            let query: Query = serde_urlencoded::from_str(text).expect(text);
            assert_eq!(query.limit, limit, "{text}");
        }
        for text in ["limit=7.5", "limit=-1", "limit=x"] {
            assert!(serde_urlencoded::from_str::<Query>(text).is_err(), "{text}");
        }
    }
}
