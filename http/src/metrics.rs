//! What `/metrics` says about learning from clicks, written alike by `glimpse serve` and the
//! worker pool (Prometheus text format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write;

use glimpse_core::learning::{Evaluation, Learner};

/// What `/metrics` says about one learning loop.
pub struct Learning {
    /// Which loop.
    pub learner: Learner,
    /// Its active adapter's version and evaluation.
    pub active: Option<(u32, Evaluation)>,
    /// Its training runs by outcome.
    pub training_runs: BTreeMap<&'static str, u64>,
}

/// Writes what `/metrics` says about learning from clicks, labelled by learner.
pub fn write_learning(out: &mut String, learners: &[Learning]) {
    let _ = writeln!(
        out,
        "# HELP glimpse_training_runs_total Adapter training runs by learner and outcome.\n\
         # TYPE glimpse_training_runs_total counter"
    );
    for learning in learners {
        for (outcome, runs) in &learning.training_runs {
            let _ = writeln!(
                out,
                "glimpse_training_runs_total{{learner=\"{}\",outcome=\"{outcome}\"}} {runs}",
                learning.learner.name()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP glimpse_adapter_version The active adapter's version by learner (0: none).\n\
         # TYPE glimpse_adapter_version gauge"
    );
    for learning in learners {
        let _ = writeln!(
            out,
            "glimpse_adapter_version{{learner=\"{}\"}} {}",
            learning.learner.name(),
            learning.active.map_or(0, |(version, _)| version)
        );
    }
    let _ = writeln!(
        out,
        "# HELP glimpse_adapter_held_out_score How the active adapter (\"trained\") and what \
         ranked before it (\"previous\") scored on held-out clicked searches, by learner.\n\
         # TYPE glimpse_adapter_held_out_score gauge"
    );
    for learning in learners {
        let Some((_, evaluation)) = &learning.active else {
            continue;
        };
        for (ranker, scores) in [
            ("trained", &evaluation.trained),
            ("previous", &evaluation.previous),
        ] {
            for (measure, value) in [("ndcg_at_10", scores.ndcg_at_10), ("mrr", scores.mrr)] {
                let _ = writeln!(
                    out,
                    "glimpse_adapter_held_out_score{{learner=\"{}\",ranker=\"{ranker}\",\
                     measure=\"{measure}\"}} {value}",
                    learning.learner.name()
                );
            }
        }
    }
}
