//! A simulated world with known relevance and a known position bias, for the learner's tests and
//! `glimpse bench learner`.
//!
//! Queries lean towards one of a few directions `b`; for those, people want images towards `a`
//! instead (`intent = q + 1.5·a·(b·q)`, a low-rank twist a [`QueryAdapter`] can learn). A search
//! shows the 10 images the base embedding ranks first; the relevant ones are the 3 best by intent
//! among the base's 30 best. People look at rank `k` with probability `1/k^1.5`, click what they
//! look at when it is relevant, and now and then (10 %) when it is not.

use super::{
    ClickedSearch, ExplorationSettings, Propensities, PropensitySettings, QueryAdapter,
    RankingScores, ShownResult, SplitMix, SwapCounts, TrainingSettings, evaluate, triples,
};
use crate::Embedding;

/// How often a person looks at rank `k`: `1/k^EXAMINATION_EXPONENT`.
pub const EXAMINATION_EXPONENT: f64 = 1.5;
/// How often a person clicks a result they looked at that is not relevant.
pub const NOISE_CLICKS: f32 = 0.1;

/// The simulated world (see the module).
pub struct World {
    dimension: usize,
    twist: Vec<(Vec<f32>, Vec<f32>)>,
    images: Vec<Embedding>,
    random: SplitMix,
}

impl World {
    /// A world of `images` random images in `dimension` dimensions.
    pub fn new(seed: u64, dimension: usize, images: usize) -> Self {
        let mut random = SplitMix::new(seed);
        let twist = (0..2)
            .map(|_| {
                let a = random_unit(&mut random, dimension).into_vec();
                let b = random_unit(&mut random, dimension).into_vec();
                (a, b)
            })
            .collect();
        let images = (0..images)
            .map(|_| random_unit(&mut random, dimension))
            .collect();
        Self {
            dimension,
            twist,
            images,
            random,
        }
    }

    fn intent(&self, query: &Embedding) -> Embedding {
        let mut target = query.as_slice().to_vec();
        for (a, b) in &self.twist {
            let along: f32 = b.iter().zip(query.as_slice()).map(|(x, y)| x * y).sum();
            target
                .iter_mut()
                .zip(a)
                .for_each(|(t, x)| *t += 1.5 * x * along);
        }
        Embedding::normalized(target).unwrap_or_else(|_| query.clone())
    }

    /// The 10 images the base embedding ranks first for `query`, with whether each is relevant.
    fn results(&self, query: &Embedding) -> Vec<(Embedding, bool)> {
        let intent = self.intent(query);
        let mut base: Vec<&Embedding> = self.images.iter().collect();
        base.sort_by(|a, b| b.cosine(query).total_cmp(&a.cosine(query)));
        base.truncate(30);
        let mut by_intent = base.clone();
        by_intent.sort_by(|a, b| b.cosine(&intent).total_cmp(&a.cosine(&intent)));
        let relevant: Vec<&Embedding> = by_intent.into_iter().take(3).collect();
        base.into_iter()
            .take(10)
            .map(|image| (image.clone(), relevant.contains(&image)))
            .collect()
    }

    /// A new query.
    pub fn query(&mut self) -> Embedding {
        let noise = random_unit(&mut self.random, self.dimension);
        let lean = (self.random.next_u64() % self.twist.len() as u64) as usize;
        let mixed = noise
            .as_slice()
            .iter()
            .zip(&self.twist[lean].1)
            .map(|(n, b)| n + b)
            .collect();
        Embedding::normalized(mixed).unwrap_or(noise)
    }

    /// `count` new queries' results with their true relevance as the "clicks" (no bias), those
    /// with a relevant result only.
    pub fn truths(&mut self, count: usize) -> Vec<ClickedSearch> {
        (0..count)
            .map(|_| {
                let query = self.query();
                let shown = self
                    .results(&query)
                    .into_iter()
                    .zip(1..)
                    .map(|((image, relevant), rank)| ShownResult {
                        rank,
                        image,
                        clicked: relevant,
                    })
                    .collect();
                ClickedSearch {
                    queries: vec![query],
                    shown,
                }
            })
            .filter(|s| s.shown.iter().any(|r| r.clicked))
            .collect()
    }

    /// A click log: `sessions` searches of each of `queries` new queries, a share swapped as
    /// `exploration` says, clicked as the module says. Returns the searches with a click and the
    /// swap counts of all of them.
    pub fn click_log(
        &mut self,
        queries: usize,
        sessions: usize,
        exploration: &ExplorationSettings,
    ) -> (Vec<ClickedSearch>, Vec<SwapCounts>) {
        let mut searches = Vec::new();
        let mut observations = Vec::new();
        for _ in 0..queries {
            let query = self.query();
            let results = self.results(&query);
            for _ in 0..sessions {
                let mut shown = results.clone();
                let swapped_with = exploration.swap(shown.len(), self.random.next_u64());
                if let Some(rank) = swapped_with {
                    shown.swap(0, rank as usize - 1);
                }
                let shown: Vec<ShownResult> = shown
                    .into_iter()
                    .zip(1..)
                    .map(|((image, relevant), rank)| {
                        let looked = f64::from(self.random.unit())
                            < f64::from(rank).powf(-EXAMINATION_EXPONENT);
                        let wanted = relevant || self.random.unit() < NOISE_CLICKS;
                        ShownResult {
                            rank,
                            image,
                            clicked: looked && wanted,
                        }
                    })
                    .collect();
                let probe = swapped_with.unwrap_or(1) as usize - 1;
                observations.push((swapped_with, shown[probe].clicked));
                if shown.iter().any(|r| r.clicked) {
                    searches.push(ClickedSearch {
                        queries: vec![query.clone()],
                        shown,
                    });
                }
            }
        }
        (searches, tally(&observations))
    }
}

/// What training on a biased click log achieves, measured against true relevance on new queries.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BiasExperiment {
    /// The encoder's embeddings alone.
    pub base: RankingScores,
    /// Trained as if every rank were looked at.
    pub uncorrected: RankingScores,
    /// Trained with propensities estimated from the log's swaps.
    pub corrected: RankingScores,
    /// The propensities estimated, rank 1 first.
    pub propensities: Vec<f64>,
    /// Training triples.
    pub triples: usize,
}

/// Trains an adapter with and without propensity correction on a click log of 300 queries × 20
/// searches (10 % swapped) in a 32-dimension world of 400 images, and scores both on 200 new
/// queries' true relevance.
pub fn position_bias_experiment(seed: u64, settings: &TrainingSettings) -> BiasExperiment {
    let mut world = World::new(seed, 32, 400);
    let exploration = ExplorationSettings {
        swap_share: 0.1,
        max_rank: 10,
    };
    let (searches, counts) = world.click_log(300, 20, &exploration);
    let estimated = Propensities::estimate(&counts, 10, &PropensitySettings::default());
    let held_out = world.truths(200);
    let uniform = Propensities::uniform();
    let trained = |propensities: &Propensities| {
        let mut adapter = QueryAdapter::new(32, settings.rank, settings.alpha, settings.seed);
        adapter.train(&triples(&searches, propensities), settings);
        evaluate(Some(&adapter), &held_out, &uniform)
    };
    BiasExperiment {
        base: evaluate(None, &held_out, &uniform),
        uncorrected: trained(&uniform),
        corrected: trained(&estimated),
        propensities: estimated.by_rank().to_vec(),
        triples: triples(&searches, &estimated).len(),
    }
}

/// A random unit vector (coordinates uniform in ±1, normalised); `dimension` is at least 1.
#[allow(clippy::expect_used)]
pub(crate) fn random_unit(random: &mut SplitMix, dimension: usize) -> Embedding {
    let values: Vec<f32> = (0..dimension).map(|_| random.unit() * 2.0 - 1.0).collect();
    Embedding::normalized(values).expect("uniform draws in ±1 are not all zero")
}

/// Swap counts from (swapped with, would-be first result clicked) observations.
pub fn tally(observations: &[(Option<u32>, bool)]) -> Vec<SwapCounts> {
    let mut counts: Vec<SwapCounts> = Vec::new();
    for (swapped_with, clicked) in observations {
        let index = match counts.iter().position(|c| c.swapped_with == *swapped_with) {
            Some(index) => index,
            None => {
                counts.push(SwapCounts {
                    swapped_with: *swapped_with,
                    searches: 0,
                    clicked: 0,
                });
                counts.len() - 1
            }
        };
        counts[index].searches += 1;
        counts[index].clicked += u64::from(*clicked);
    }
    counts
}
