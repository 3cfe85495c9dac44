//! `glimpse bench learner`: what the CPU learner costs and what it gains, on the simulated world
//! of [`glimpse_core::learning::simulation`].

use std::time::Instant;

use glimpse_core::learning::simulation::{self, BiasExperiment, World};
use glimpse_core::learning::{
    ExplorationSettings, Propensities, PropensitySettings, QueryAdapter, TrainingSettings, triples,
};
use serde::Serialize;

/// The figures of `glimpse bench learner`.
#[derive(Debug, Serialize)]
pub struct LearnerReport {
    /// Triples trained on for the timing.
    pub triples: usize,
    /// Their dimension (ViT-B/32's).
    pub dimension: usize,
    /// Optimiser steps and triples per step (the defaults of `glimpse serve`).
    pub steps: usize,
    /// Triples per step.
    pub batch_size: usize,
    /// Median milliseconds of one training run over `triples`.
    pub train_ms: f64,
    /// Training on the simulated biased click log, scored on new queries' true relevance.
    pub bias: BiasExperiment,
}

/// Triples the timing trains on.
const TRIPLES: usize = 10_000;
/// Dimension of the timing's embeddings.
const DIMENSION: usize = 512;

/// Times training on 10,000 triples of 512 dimensions (median of `rounds`) and runs the position
/// bias experiment.
pub fn learner(rounds: usize) -> LearnerReport {
    let settings = TrainingSettings::default();
    let mut world = World::new(11, DIMENSION, 4000);
    let exploration = ExplorationSettings::default();
    let mut log = Vec::new();
    while triples(&log, &Propensities::uniform()).len() < TRIPLES {
        log.extend(world.click_log(50, 20, &exploration).0);
    }
    let propensities = Propensities::estimate(&[], 10, &PropensitySettings::default());
    let mut examples = triples(&log, &propensities);
    examples.truncate(TRIPLES);
    let mut times: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let mut adapter = QueryAdapter::new(DIMENSION, settings.rank, settings.alpha, 1);
            let started = Instant::now();
            adapter.train(&examples, &settings);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    LearnerReport {
        triples: examples.len(),
        dimension: DIMENSION,
        steps: settings.steps,
        batch_size: settings.batch_size,
        train_ms: times[times.len() / 2],
        bias: simulation::position_bias_experiment(33, &settings),
    }
}
