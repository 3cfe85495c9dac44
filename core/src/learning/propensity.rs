//! Position bias: how likely a person is to look at each rank at all, estimated from searches
//! whose top results were swapped at random (Joachims, Swaminathan & Schnabel, "Unbiased
//! Learning-to-Rank with Biased Feedback", WSDM 2017, the swap intervention).
//!
//! A small share of searches shows the result of rank 1 at a rank `k` drawn uniformly from
//! `2..=max_rank`, and the result of rank `k` at rank 1. The search that would have been first is
//! equally relevant on average whether it was moved or not, so the click rate at `k` in searches
//! swapped with `k`, over the click rate at rank 1 in searches not swapped, is `p_k / p_1`.

use serde::{Deserialize, Serialize};

/// Which searches are swapped for exploration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplorationSettings {
    /// The share of first pages whose rank 1 is swapped (0.05; 0 turns exploration off).
    pub swap_share: f64,
    /// The deepest rank swapped with rank 1 (10).
    pub max_rank: u32,
}

impl Default for ExplorationSettings {
    fn default() -> Self {
        Self {
            swap_share: 0.05,
            max_rank: 10,
        }
    }
}

impl ExplorationSettings {
    /// No exploration: every search is shown as ranked.
    pub const OFF: Self = Self {
        swap_share: 0.0,
        max_rank: 10,
    };

    /// The rank to swap with rank 1 in a first page of `shown` results, given a uniformly random
    /// `draw`; `None` when this search is not swapped.
    pub fn swap(&self, shown: usize, draw: u64) -> Option<u32> {
        let deepest = self.max_rank.min(u32::try_from(shown).unwrap_or(u32::MAX));
        let chosen = (draw >> 11) as f64 / (1u64 << 53) as f64;
        if deepest < 2 || chosen >= self.swap_share {
            return None;
        }
        // The low bits, independent of the share's draw above, choose the rank.
        Some(2 + (draw % u64::from(deepest - 1)) as u32)
    }
}

/// How propensities are estimated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PropensitySettings {
    /// Swapped searches a rank needs before its own estimate is used (30).
    pub min_swaps: u32,
    /// Until then, and past the deepest swapped rank, `p_k = 1/k^prior_exponent` (1.0).
    pub prior_exponent: f64,
    /// The smallest propensity (0.1): no click weighs more than 1/clip.
    pub clip: f64,
}

impl Default for PropensitySettings {
    fn default() -> Self {
        Self {
            min_swaps: 30,
            prior_exponent: 1.0,
            clip: 0.1,
        }
    }
}

/// What logged first pages tell about position bias: of the searches whose rank 1 was swapped
/// with `swapped_with` (or not swapped, for `None`), how many there were and in how many the
/// would-be first result was clicked (shown at `swapped_with`, or at rank 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapCounts {
    /// The rank rank 1 was swapped with, if it was.
    pub swapped_with: Option<u32>,
    /// Searches.
    pub searches: u64,
    /// Of those, the ones whose would-be first result was clicked.
    pub clicked: u64,
}

/// Examination propensity by rank, relative to rank 1 (which is 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Propensities {
    /// `by_rank[k - 1]` is `p_k`; ranks past the end take the last value.
    by_rank: Vec<f64>,
}

impl Propensities {
    /// No position bias: every rank is seen (what uncorrected training assumes).
    pub fn uniform() -> Self {
        Self { by_rank: vec![1.0] }
    }

    /// Given propensities (rank 1 first), clipped to `[clip, 1]`.
    pub fn from_ranks(by_rank: Vec<f64>, clip: f64) -> Self {
        let by_rank: Vec<f64> = by_rank
            .into_iter()
            .map(|p| {
                if p.is_finite() {
                    p.clamp(clip, 1.0)
                } else {
                    1.0
                }
            })
            .collect();
        if by_rank.is_empty() {
            Self::uniform()
        } else {
            Self { by_rank }
        }
    }

    /// Estimates propensities for ranks `1..=max_rank` from logged first pages (see the module).
    /// A rank with fewer than `min_swaps` swapped searches, or with no click at rank 1 to compare
    /// against, takes the prior; the estimates are then made non-increasing with rank (a result
    /// further down is not seen more often) and clipped.
    pub fn estimate(counts: &[SwapCounts], max_rank: u32, settings: &PropensitySettings) -> Self {
        let rate = |swapped_with: Option<u32>| {
            let (mut searches, mut clicked) = (0u64, 0u64);
            for count in counts.iter().filter(|c| c.swapped_with == swapped_with) {
                searches += count.searches;
                clicked += count.clicked;
            }
            (searches, clicked as f64 / searches.max(1) as f64)
        };
        let (_, first_rate) = rate(None);
        let mut by_rank = vec![1.0];
        for rank in 2..=max_rank.max(1) {
            let prior = f64::from(rank).powf(-settings.prior_exponent);
            let (swaps, rate_at_rank) = rate(Some(rank));
            let estimate = if swaps >= u64::from(settings.min_swaps) && first_rate > 0.0 {
                rate_at_rank / first_rate
            } else {
                prior
            };
            let above = by_rank.last().copied().unwrap_or(1.0);
            by_rank.push(estimate.min(above));
        }
        Self::from_ranks(by_rank, settings.clip)
    }

    /// `p_rank` (rank 1 is the first).
    pub fn at(&self, rank: u32) -> f64 {
        let index = (rank.max(1) - 1) as usize;
        self.by_rank
            .get(index)
            .or(self.by_rank.last())
            .copied()
            .unwrap_or(1.0)
    }

    /// The propensities, rank 1 first.
    pub fn by_rank(&self) -> &[f64] {
        &self.by_rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::SplitMix;
    use crate::learning::simulation::tally;

    #[test]
    fn swaps_are_rare_uniform_and_stay_among_the_shown() {
        let settings = ExplorationSettings::default();
        let mut random = SplitMix::new(5);
        let mut counts = [0u32; 11];
        let draws = 200_000;
        for _ in 0..draws {
            if let Some(rank) = settings.swap(20, random.next_u64()) {
                counts[rank as usize] += 1;
            }
        }
        let swapped: u32 = counts.iter().sum();
        let share = f64::from(swapped) / f64::from(draws);
        assert!((share - 0.05).abs() < 0.005, "{share}");
        for count in &counts[2..] {
            let expected = f64::from(swapped) / 9.0;
            assert!(
                (f64::from(*count) - expected).abs() < expected * 0.15,
                "{counts:?}"
            );
        }
        assert_eq!(settings.swap(1, 0), None);
        assert!((0..1000).all(|d| settings.swap(3, d).is_none_or(|k| k <= 3)));
        let off = ExplorationSettings {
            swap_share: 0.0,
            ..settings
        };
        assert_eq!(off.swap(20, 0), None);
    }

    #[test]
    fn estimates_recover_a_known_position_bias() {
        let truth = |rank: u32| 1.0 / f64::from(rank).powf(1.5);
        let mut random = SplitMix::new(9);
        let exploration = ExplorationSettings {
            swap_share: 0.3,
            max_rank: 6,
        };
        let observations: Vec<(Option<u32>, bool)> = (0..60_000)
            .map(|_| {
                // The would-be first result is relevant with probability 0.6, wherever shown.
                let relevant = random.unit() < 0.6;
                let swapped_with = exploration.swap(10, random.next_u64());
                let seen = random.unit() < truth(swapped_with.unwrap_or(1)) as f32;
                (swapped_with, relevant && seen)
            })
            .collect();
        let estimated =
            Propensities::estimate(&tally(&observations), 6, &PropensitySettings::default());
        for rank in 1..=6 {
            let (got, want) = (estimated.at(rank), truth(rank).max(0.1));
            assert!((got - want).abs() < 0.04, "rank {rank}: {got} vs {want}");
        }
        assert_eq!(estimated.at(40), estimated.at(6));
    }

    #[test]
    fn without_enough_swaps_the_prior_holds_and_everything_is_clipped() {
        let estimated = Propensities::estimate(&[], 20, &PropensitySettings::default());
        assert_eq!(estimated.at(1), 1.0);
        assert_eq!(estimated.at(4), 0.25);
        assert_eq!(estimated.at(20), 0.1);
        assert_eq!(Propensities::uniform().at(7), 1.0);
    }
}
