//! Search types: requests, query ids, results, the search log.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::EncoderId;
use crate::photo::{Photo, PhotoId};
use crate::query::SearchText;

/// The most results one search returns.
pub const MAX_TOP_K: usize = 200;
/// How deep paging goes: no result past this rank is returned (`offset` is below it, and a page
/// reaching past it is cut there).
pub const MAX_DEPTH: usize = 1000;
/// The largest `offset`.
pub const MAX_OFFSET: usize = MAX_DEPTH - 1;
/// The largest `min_score` (scores are a few standard deviations).
pub const MAX_MIN_SCORE: f32 = 1000.0;
/// The smallest `min_score`.
pub const LOWEST_MIN_SCORE: f32 = -MAX_MIN_SCORE;
/// Results returned when the request does not say.
pub const DEFAULT_TOP_K: usize = 20;
/// How many of the best candidates the reranker sees.
pub const RERANK_CANDIDATES: usize = 10;

/// A search as a client asks for it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// The query, in Glimpse's query language (see the operation's description).
    #[schemars(with = "SearchText")]
    pub query: String,
    /// How many results at most (1 to [`MAX_TOP_K`]).
    #[serde(
        default = "default_top_k",
        deserialize_with = "crate::whole_number::deserialize"
    )]
    #[schemars(range(min = 1, max = "MAX_TOP_K"))]
    pub top_k: usize,
    /// Leave out results scoring below this (see [`SearchResult::score`]), from
    /// -[`MAX_MIN_SCORE`] to [`MAX_MIN_SCORE`].
    #[serde(default)]
    #[schemars(range(min = "LOWEST_MIN_SCORE", max = "MAX_MIN_SCORE"))]
    pub min_score: Option<f32>,
    /// Skip this many of the best results (the next page starts at `offset + top_k`); ranks stay
    /// absolute. No result past rank [`MAX_DEPTH`] is returned.
    #[serde(default, deserialize_with = "crate::whole_number::deserialize")]
    #[schemars(range(max = "MAX_OFFSET"))]
    pub offset: usize,
}

fn default_top_k() -> usize {
    DEFAULT_TOP_K
}

impl SearchRequest {
    /// A request with the default `top_k` and no threshold.
    pub fn new(query: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            top_k: DEFAULT_TOP_K,
            min_score: None,
            offset: 0,
        }
    }
}

/// An unguessable search id (128 random bits, 32 lowercase hex digits); clicks must name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QueryId([u8; 16]);

impl QueryId {
    /// A fresh random id from the operating system's generator.
    pub fn random() -> Self {
        Self(crate::random_id::fresh())
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::random_id::write_hex(&self.0, f)
    }
}

/// A string that is not a query id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a search id: search ids are the 32 hexadecimal digits a search response returns")]
pub struct QueryIdError;

impl FromStr for QueryId {
    type Err = QueryIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        crate::random_id::parse_hex(text)
            .map(Self)
            .ok_or(QueryIdError)
    }
}

crate::serde_as_text!(
    QueryId,
    crate::random_id::PATTERN,
    "A search id: the 32 hexadecimal digits a search response returns."
);

/// Milliseconds spent in each stage of one search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StageTimings {
    /// Parsing the query.
    pub parse_ms: f64,
    /// Embedding its texts.
    pub embed_ms: f64,
    /// Nearest-neighbour retrieval with filters, and scoring.
    pub retrieve_ms: f64,
    /// Reranking.
    pub rerank_ms: f64,
    /// Loading the photos and writing the search log.
    pub log_ms: f64,
    /// The whole search.
    pub total_ms: f64,
}

impl StageTimings {
    /// The stage names, in order, as used in storage columns (`{name}_ms`) and metrics.
    pub const STAGES: [&'static str; 6] = ["parse", "embed", "retrieve", "rerank", "log", "total"];

    /// The milliseconds of each stage, in the order of [`Self::STAGES`].
    pub fn values(&self) -> [f64; 6] {
        [
            self.parse_ms,
            self.embed_ms,
            self.retrieve_ms,
            self.rerank_ms,
            self.log_ms,
            self.total_ms,
        ]
    }

    /// Timings from values in the order of [`Self::STAGES`].
    pub fn from_values(
        [parse_ms, embed_ms, retrieve_ms, rerank_ms, log_ms, total_ms]: [f64; 6],
    ) -> Self {
        Self {
            parse_ms,
            embed_ms,
            retrieve_ms,
            rerank_ms,
            log_ms,
            total_ms,
        }
    }
}

/// One result of a search.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SearchResult {
    /// Position in the whole ranking, from 1 (a page at `offset` 40 starts at rank 41); clicks
    /// name it.
    pub rank: u32,
    /// How well the photo matches, in standard deviations above the library's typical match for
    /// each term, combined with the terms' weights (negative terms subtract). About 2 is a good
    /// match, 4 an excellent one; the same scale for text and `like:` terms.
    pub score: f32,
    /// The reranker's probability, for the results it saw.
    pub rerank_probability: Option<f32>,
    /// The photo.
    pub photo: Photo,
}

/// What a search returns.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SearchResponse {
    /// Its id, for clicks.
    pub query_id: QueryId,
    /// The query as sent.
    pub query: String,
    /// The ranked results.
    pub results: Vec<SearchResult>,
    /// Stage timings.
    pub timings: StageTimings,
    /// Why results are in retrieval order instead of reranked (reranker down or too slow).
    pub rerank_fallback: Option<String>,
    /// What ranked the results.
    pub ranked_by: RankedBy,
}

/// What ranked a search's results, besides the embeddings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RankedBy {
    /// The version of the query adapter learned from clicks that scored them; none when no
    /// adapter is active (the encoder's embeddings alone).
    pub adapter_version: Option<u32>,
    /// The reranker whose probabilities the first results carry; none when it fell back or did
    /// not run.
    pub reranker: Option<String>,
}

/// One logged result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoggedResult {
    /// Rank, from 1.
    pub rank: u32,
    /// The photo.
    pub photo_id: PhotoId,
    /// Its score.
    pub score: f32,
    /// The reranker's probability, if it saw this result.
    pub rerank_probability: Option<f32>,
}

/// What the search log keeps of a search besides its results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoggedSearch {
    /// Its id.
    pub query_id: QueryId,
    /// The query as typed.
    pub text: String,
    /// The parsed form, as JSON.
    pub parsed: String,
    /// The encoder that embedded it.
    pub encoder: EncoderId,
    /// Stage timings.
    pub timings: StageTimings,
    /// Why reranking fell back, if it did.
    pub rerank_fallback: Option<String>,
    /// The version of the query adapter that scored it, if one was active.
    #[serde(default)]
    pub adapter_version: Option<u32>,
    /// For exploration (estimating how often each rank is looked at): the rank whose result was
    /// shown first, the first result being shown at that rank. None for a search shown as ranked.
    #[serde(default)]
    pub swapped_with: Option<u32>,
}

/// A search as the flow hands it to the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchLog {
    /// The search.
    #[serde(flatten)]
    pub search: LoggedSearch,
    /// The results, in rank order.
    pub results: Vec<LoggedResult>,
}

/// A logged result with its click.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LoggedResultWithClick {
    /// The result.
    #[serde(flatten)]
    pub result: LoggedResult,
    /// Whether it was clicked.
    pub clicked: bool,
    /// When it was first clicked, seconds since 1970.
    pub clicked_at: Option<i64>,
}

/// A logged search with its clicks, as read back from the catalog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SearchLogEntry {
    /// The search.
    #[serde(flatten)]
    pub search: LoggedSearch,
    /// When it ran, seconds since 1970.
    pub created_at: i64,
    /// The results with clicks.
    pub results: Vec<LoggedResultWithClick>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_are_random_and_round_trip() {
        let (a, b) = (QueryId::random(), QueryId::random());
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(a.to_string().parse::<QueryId>(), Ok(a));
        assert!("00".parse::<QueryId>().is_err());
        assert!("zz".repeat(16).parse::<QueryId>().is_err());
    }
}
