//! How well an adapter ranks held-out clicks: NDCG@10 and MRR, each click weighted by the inverse
//! of its rank's propensity so that a click far down counts for the many it stands for (and the
//! same measures for any ranking with weighted relevant results).

use serde::{Deserialize, Serialize};

use super::{ClickedSearch, Propensities, QueryAdapter};

/// Ranking quality on a set of searches (each from 0 to 1; higher is better).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RankingScores {
    /// Mean over searches of NDCG@10, with each click's gain `1/p_rank`.
    pub ndcg_at_10: f64,
    /// Mean reciprocal rank of the clicks, each weighted by `1/p_rank`.
    pub mrr: f64,
    /// How many searches were scored.
    pub searches: usize,
}

impl RankingScores {
    /// Whether these scores are at least as good as `other` on both measures (within rounding).
    pub fn at_least(&self, other: &RankingScores) -> bool {
        const ROUNDING: f64 = 1e-9;
        self.ndcg_at_10 + ROUNDING >= other.ndcg_at_10 && self.mrr + ROUNDING >= other.mrr
    }
}

/// The cut-off of NDCG.
const CUTOFF: usize = 10;

/// Ranks each search's shown results by the adapted query (by the query itself without an
/// adapter) and scores where its clicks land.
pub fn evaluate(
    adapter: Option<&QueryAdapter>,
    searches: &[ClickedSearch],
    propensities: &Propensities,
) -> RankingScores {
    let rankings: Vec<Vec<f64>> = searches
        .iter()
        .map(|search| {
            search
                .ranked_by(adapter)
                .iter()
                .map(|result| {
                    if result.clicked {
                        1.0 / propensities.at(result.rank)
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    score_rankings(&rankings)
}

/// Scores rankings given as the gain of each position, best first: 0 for a result that was not
/// wanted, its weight for one that was (a click's `1/p_rank`, or 1). Rankings without a wanted
/// result are left out.
pub fn score_rankings(rankings: &[Vec<f64>]) -> RankingScores {
    let (mut ndcg_sum, mut reciprocal_sum, mut weight_sum, mut scored) = (0.0, 0.0, 0.0, 0);
    for ranking in rankings {
        let mut gains: Vec<f64> = Vec::new();
        let mut dcg = 0.0;
        for (position, &weight) in ranking.iter().enumerate() {
            if weight <= 0.0 {
                continue;
            }
            gains.push(weight);
            reciprocal_sum += weight / (position + 1) as f64;
            weight_sum += weight;
            if position < CUTOFF {
                dcg += weight / discount(position);
            }
        }
        if gains.is_empty() {
            continue;
        }
        gains.sort_by(|a, b| b.total_cmp(a));
        let ideal: f64 = gains
            .iter()
            .take(CUTOFF)
            .enumerate()
            .map(|(position, gain)| gain / discount(position))
            .sum();
        ndcg_sum += dcg / ideal;
        scored += 1;
    }
    RankingScores {
        ndcg_at_10: if scored == 0 {
            0.0
        } else {
            ndcg_sum / scored as f64
        },
        mrr: if weight_sum == 0.0 {
            0.0
        } else {
            reciprocal_sum / weight_sum
        },
        searches: scored,
    }
}

/// `log2(position + 2)`: the discount of a 0-based position.
fn discount(position: usize) -> f64 {
    ((position + 2) as f64).log2()
}
