//! The worker pool's internal API as core's ports: the query encoder (`POST /v1/embed/text`) and
//! the reranker (`POST /v1/rerank`, within a time budget), with the internal token.

use std::time::Duration;

use glimpse_core::ports::{PortError, Relevance, RerankCandidate, Reranker, TextEmbedder};
use glimpse_core::{Embedding, EncoderId};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use crate::outbound::{Reply, post_json, send, within};
use crate::settings::PoolSettings;

/// The pool's text encoder, for the encoder the index is built with.
pub struct PoolEncoder<'a> {
    settings: &'a PoolSettings,
    encoder: EncoderId,
}

impl<'a> PoolEncoder<'a> {
    /// The encoder `encoder` of the pool at `settings`.
    pub fn new(settings: &'a PoolSettings, encoder: EncoderId) -> Self {
        Self { settings, encoder }
    }
}

/// What an answer other than 200 means for the caller.
fn pool_error(service: &str, reply: &Reply) -> PortError {
    let message = format!("{service}: {} {}", reply.status, reply.excerpt());
    match reply.status {
        StatusCode::UNAUTHORIZED => PortError::Internal(format!(
            "{message}: worker_token is not the pool's GLIMPSE__WORKER__TOKEN"
        )),
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => PortError::Rejected(message),
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            PortError::Unavailable(message)
        }
        _ => PortError::Internal(message),
    }
}

#[derive(Deserialize)]
struct Embedded {
    encoder: String,
    vectors: Vec<Vec<f32>>,
}

#[async_trait::async_trait(?Send)]
impl TextEmbedder for PoolEncoder<'_> {
    fn encoder(&self) -> &EncoderId {
        &self.encoder
    }

    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Embedding>, PortError> {
        const SERVICE: &str = "the worker pool's encoder";
        let url = format!("{}/v1/embed/text", self.settings.url.trim_end_matches('/'));
        let request = post_json(&url, &self.settings.token, &json!({ "texts": texts }))?;
        let reply = send(SERVICE, request).await?;
        if reply.status != StatusCode::OK {
            return Err(pool_error(SERVICE, &reply));
        }
        let embedded: Embedded = serde_json::from_slice(&reply.body)
            .map_err(|e| PortError::Internal(format!("{SERVICE}: unexpected answer: {e}")))?;
        if embedded.encoder != self.encoder.to_string() {
            return Err(PortError::Internal(format!(
                "{SERVICE} runs {}, but the index is built with {}: start workers of {}",
                embedded.encoder, self.encoder, self.encoder
            )));
        }
        embedded
            .vectors
            .into_iter()
            .map(|v| {
                Embedding::normalized(v).map_err(|e| PortError::Internal(format!("{SERVICE}: {e}")))
            })
            .collect()
    }
}

/// The pool's reranker, given `budget` to answer.
pub struct PoolReranker<'a> {
    settings: &'a PoolSettings,
}

impl<'a> PoolReranker<'a> {
    /// The reranker at `settings.rerank_url`.
    pub fn new(settings: &'a PoolSettings) -> Self {
        Self { settings }
    }
}

#[async_trait::async_trait(?Send)]
impl Reranker for PoolReranker<'_> {
    fn name(&self) -> String {
        "worker-pool".to_owned()
    }

    async fn rerank(
        &self,
        query: &str,
        candidates: &[RerankCandidate],
    ) -> Result<Relevance, PortError> {
        const SERVICE: &str = "the worker pool's reranker";
        let url = format!(
            "{}/v1/rerank",
            self.settings.rerank_url.trim_end_matches('/')
        );
        let request = post_json(
            &url,
            &self.settings.token,
            &json!({ "query": query, "candidates": candidates }),
        )?;
        let budget: Duration = self.settings.rerank_budget;
        let reply = within(budget, send(SERVICE, request))
            .await
            .ok_or_else(|| {
                PortError::Unavailable(format!(
                    "{SERVICE} did not answer within {} ms (rerank_budget_ms)",
                    budget.as_millis()
                ))
            })??;
        if reply.status != StatusCode::OK {
            return Err(pool_error(SERVICE, &reply));
        }
        serde_json::from_slice::<Relevance>(&reply.body)
            .map_err(|e| PortError::Internal(format!("{SERVICE}: unexpected answer: {e}")))
    }
}
