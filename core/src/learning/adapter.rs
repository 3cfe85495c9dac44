//! The query adapter: a low-rank residual correction of query embeddings, and its training.

use serde::{Deserialize, Serialize};

use super::{SplitMix, Triple};
use crate::Embedding;

/// A low-rank residual adapter on query embeddings (CLIP-Adapter style):
/// `q' = normalise(q + α·U·(V·q))`, with `V` (rank × dimension, LoRA's A) and `U`
/// (dimension × rank, LoRA's B). A new adapter has `U = 0`: it is the identity until trained.
///
/// Training fits `z = scale·cos(q', x) + bias` to clicks with a logistic loss; `scale` and `bias`
/// calibrate that probability and never change a ranking.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "AdapterFile", into = "AdapterFile")]
pub struct QueryAdapter {
    dimension: usize,
    rank: usize,
    alpha: f32,
    /// `V`, row-major, rank × dimension.
    down: Vec<f32>,
    /// `U`, row-major, dimension × rank.
    up: Vec<f32>,
    scale: f32,
    bias: f32,
}

/// The stored form of a [`QueryAdapter`], checked when read.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdapterFile {
    format: String,
    dimension: usize,
    rank: usize,
    alpha: f32,
    down: Vec<f32>,
    up: Vec<f32>,
    scale: f32,
    bias: f32,
}

/// The `format` of a stored adapter.
const FORMAT: &str = "glimpse-query-adapter-1";
/// The logit scale training starts from (CLIP cosines differ by hundredths between a match and a
/// miss; the scale is learned).
const INITIAL_SCALE: f32 = 10.0;

impl TryFrom<AdapterFile> for QueryAdapter {
    type Error = String;

    fn try_from(file: AdapterFile) -> Result<Self, String> {
        if file.format != FORMAT {
            return Err(format!(
                "not a query adapter of this Glimpse: format {:?}, expected {FORMAT:?}",
                file.format
            ));
        }
        let size = file.dimension.checked_mul(file.rank);
        if file.dimension == 0 || file.rank == 0 || size.is_none() {
            return Err("a query adapter needs a dimension and a rank of at least 1".to_owned());
        }
        if Some(file.down.len()) != size || Some(file.up.len()) != size {
            return Err(format!(
                "a query adapter of dimension {} and rank {} needs {} values in each matrix",
                file.dimension,
                file.rank,
                file.dimension * file.rank
            ));
        }
        let finite = [file.alpha, file.scale, file.bias]
            .iter()
            .chain(&file.down)
            .chain(&file.up)
            .all(|v| v.is_finite());
        if !finite {
            return Err("a query adapter holds a value that is not a finite number".to_owned());
        }
        Ok(Self {
            dimension: file.dimension,
            rank: file.rank,
            alpha: file.alpha,
            down: file.down,
            up: file.up,
            scale: file.scale,
            bias: file.bias,
        })
    }
}

impl From<QueryAdapter> for AdapterFile {
    fn from(adapter: QueryAdapter) -> Self {
        Self {
            format: FORMAT.to_owned(),
            dimension: adapter.dimension,
            rank: adapter.rank,
            alpha: adapter.alpha,
            down: adapter.down,
            up: adapter.up,
            scale: adapter.scale,
            bias: adapter.bias,
        }
    }
}

/// How to train a [`QueryAdapter`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSettings {
    /// The rank of `U·V` (8).
    pub rank: usize,
    /// `α`, the weight of the correction (1.0).
    pub alpha: f32,
    /// AdamW's step size (0.01).
    pub learning_rate: f32,
    /// AdamW's decoupled weight decay on `U` and `V` (0.01).
    pub weight_decay: f32,
    /// Optimiser steps (400).
    pub steps: usize,
    /// Triples per step (128).
    pub batch_size: usize,
    /// Seed of the initialisation and of the batch order: the same triples and settings train
    /// the same adapter.
    pub seed: u64,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 1.0,
            learning_rate: 0.01,
            weight_decay: 0.01,
            steps: 400,
            batch_size: 128,
            seed: 0x5eed,
        }
    }
}

impl QueryAdapter {
    /// An untrained adapter (the identity): `V` drawn uniformly from ±1/√dimension, `U = 0`.
    pub fn new(dimension: usize, rank: usize, alpha: f32, seed: u64) -> Self {
        let mut random = SplitMix::new(seed);
        let bound = 1.0 / (dimension.max(1) as f32).sqrt();
        Self {
            dimension,
            rank,
            alpha,
            down: (0..dimension * rank)
                .map(|_| (random.unit() * 2.0 - 1.0) * bound)
                .collect(),
            up: vec![0.0; dimension * rank],
            scale: INITIAL_SCALE,
            bias: 0.0,
        }
    }

    /// The dimension of the embeddings it adapts.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The adapted query embedding. A query of another dimension is returned unchanged (it comes
    /// from another encoder, which this adapter was not trained for).
    pub fn adapt(&self, query: &Embedding) -> Embedding {
        if query.dimension() != self.dimension {
            return query.clone();
        }
        let (adapted, _) = self.forward(query.as_slice());
        Embedding::normalized(adapted).unwrap_or_else(|_| query.clone())
    }

    /// The probability that a person looking for `query` clicks `image`, as trained.
    pub fn click_probability(&self, query: &Embedding, image: &Embedding) -> f32 {
        sigmoid(self.scale * self.adapt(query).cosine(image) + self.bias)
    }

    /// `(q + α·U·h, h)` with `h = V·q`, unnormalised.
    fn forward(&self, query: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hidden: Vec<f32> = self
            .down
            .chunks_exact(self.dimension)
            .map(|row| dot(row, query))
            .collect();
        let adapted = query
            .iter()
            .zip(self.up.chunks_exact(self.rank))
            .map(|(q, row)| q + self.alpha * dot(row, &hidden))
            .collect();
        (adapted, hidden)
    }

    /// The weighted mean logistic loss over `triples` (of this adapter's dimension).
    pub fn loss(&self, triples: &[Triple]) -> f32 {
        self.gradient(triples.iter()).loss
    }

    /// The weighted mean loss of a batch and its gradient with respect to every parameter.
    fn gradient<'a>(&self, batch: impl Iterator<Item = &'a Triple>) -> Gradient {
        let mut gradient = Gradient::zeros(self.dimension * self.rank);
        let mut total_weight = 0.0f32;
        for triple in batch {
            let (query, image) = (triple.query.as_slice(), triple.image.as_slice());
            if query.len() != self.dimension || image.len() != self.dimension {
                continue;
            }
            let (adapted, hidden) = self.forward(query);
            let norm = dot(&adapted, &adapted).sqrt().max(f32::MIN_POSITIVE);
            let cosine = dot(&adapted, image) / norm;
            let logit = self.scale * cosine + self.bias;
            let label = if triple.clicked { 1.0 } else { 0.0 };
            gradient.loss += triple.weight * (softplus(logit) - label * logit);
            total_weight += triple.weight;
            // dL/dz for this triple, then back through z = s·c + b and c = (p/|p|)·x.
            let dz = triple.weight * (sigmoid(logit) - label);
            gradient.scale += dz * cosine;
            gradient.bias += dz;
            let dc = dz * self.scale;
            let dp: Vec<f32> = adapted
                .iter()
                .zip(image)
                .map(|(p, x)| dc * (x - cosine * p / norm) / norm)
                .collect();
            // p = q + α·U·h: dU = α·dp·hᵀ; dh = α·Uᵀ·dp; dV = dh·qᵀ.
            let mut dh = vec![0.0f32; self.rank];
            for ((dp_i, up_row), grad_row) in dp
                .iter()
                .zip(self.up.chunks_exact(self.rank))
                .zip(gradient.up.chunks_exact_mut(self.rank))
            {
                for (((g, u), h), dh_j) in grad_row.iter_mut().zip(up_row).zip(&hidden).zip(&mut dh)
                {
                    *g += self.alpha * dp_i * h;
                    *dh_j += self.alpha * dp_i * u;
                }
            }
            for (dh_j, grad_row) in dh
                .iter()
                .zip(gradient.down.chunks_exact_mut(self.dimension))
            {
                for (g, q) in grad_row.iter_mut().zip(query) {
                    *g += dh_j * q;
                }
            }
        }
        if total_weight > 0.0 {
            gradient.scale_by(1.0 / total_weight);
        }
        gradient
    }

    /// Sets the bias so that the weighted mean click probability matches the weighted click rate
    /// of `triples`: an untrained adapter then starts from the base rate, and training spends its
    /// steps on telling clicked from passed-over results.
    fn calibrate(&mut self, triples: &[&Triple]) {
        let (mut weight, mut clicked, mut cosine) = (0.0f64, 0.0f64, 0.0f64);
        for triple in triples {
            let w = f64::from(triple.weight);
            weight += w;
            clicked += if triple.clicked { w } else { 0.0 };
            cosine += w * f64::from(self.adapt(&triple.query).cosine(&triple.image));
        }
        let rate = (clicked / weight).clamp(1e-3, 1.0 - 1e-3);
        self.bias = ((rate / (1.0 - rate)).ln() - f64::from(self.scale) * cosine / weight) as f32;
    }

    /// Trains on `triples` with AdamW from this adapter's current parameters (an untrained one
    /// first has its bias calibrated to the click rate). Returns the loss of
    /// each step's batch, before the step.
    pub fn train(&mut self, triples: &[Triple], settings: &TrainingSettings) -> Vec<f32> {
        let usable: Vec<&Triple> = triples
            .iter()
            .filter(|t| {
                t.query.dimension() == self.dimension
                    && t.image.dimension() == self.dimension
                    && t.weight > 0.0
                    && t.weight.is_finite()
            })
            .collect();
        if usable.is_empty() {
            return Vec::new();
        }
        if self.up.iter().all(|u| *u == 0.0) {
            self.calibrate(&usable);
        }
        let mut random = SplitMix::new(settings.seed ^ 0xba7c4);
        let mut order: Vec<usize> = (0..usable.len()).collect();
        let mut next = order.len();
        let mut optimiser = AdamW::new(self.dimension * self.rank, settings);
        let batch_size = settings.batch_size.max(1);
        let mut losses = Vec::with_capacity(settings.steps);
        for _ in 0..settings.steps {
            let mut batch = Vec::with_capacity(batch_size);
            while batch.len() < batch_size.min(usable.len()) {
                if next == order.len() {
                    random.shuffle(&mut order);
                    next = 0;
                }
                batch.push(usable[order[next]]);
                next += 1;
            }
            let gradient = self.gradient(batch.into_iter());
            losses.push(gradient.loss);
            optimiser.step(self, &gradient);
        }
        losses
    }
}

/// Gradients of the loss with respect to each parameter, and the loss.
struct Gradient {
    loss: f32,
    down: Vec<f32>,
    up: Vec<f32>,
    scale: f32,
    bias: f32,
}

impl Gradient {
    fn zeros(size: usize) -> Self {
        Self {
            loss: 0.0,
            down: vec![0.0; size],
            up: vec![0.0; size],
            scale: 0.0,
            bias: 0.0,
        }
    }

    fn scale_by(&mut self, factor: f32) {
        self.loss *= factor;
        self.scale *= factor;
        self.bias *= factor;
        self.down
            .iter_mut()
            .chain(&mut self.up)
            .for_each(|g| *g *= factor);
    }
}

/// AdamW (Loshchilov & Hutter): Adam's moments with decoupled weight decay on the matrices.
struct AdamW {
    learning_rate: f32,
    weight_decay: f32,
    steps: i32,
    /// First and second moments, in the order down, up, scale, bias.
    first: Vec<f32>,
    second: Vec<f32>,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;

impl AdamW {
    fn new(matrix_size: usize, settings: &TrainingSettings) -> Self {
        let size = 2 * matrix_size + 2;
        Self {
            learning_rate: settings.learning_rate,
            weight_decay: settings.weight_decay,
            steps: 0,
            first: vec![0.0; size],
            second: vec![0.0; size],
        }
    }

    fn step(&mut self, adapter: &mut QueryAdapter, gradient: &Gradient) {
        self.steps += 1;
        let correction1 = 1.0 - BETA1.powi(self.steps);
        let correction2 = 1.0 - BETA2.powi(self.steps);
        let matrices = adapter.down.len() + adapter.up.len();
        let parameters = adapter
            .down
            .iter_mut()
            .chain(&mut adapter.up)
            .chain([&mut adapter.scale, &mut adapter.bias]);
        let gradients = gradient
            .down
            .iter()
            .chain(&gradient.up)
            .chain([&gradient.scale, &gradient.bias]);
        for (i, ((parameter, g), (m, v))) in parameters
            .zip(gradients)
            .zip(self.first.iter_mut().zip(&mut self.second))
            .enumerate()
        {
            *m = BETA1 * *m + (1.0 - BETA1) * g;
            *v = BETA2 * *v + (1.0 - BETA2) * g * g;
            let update = (*m / correction1) / ((*v / correction2).sqrt() + EPSILON);
            let decay = if i < matrices {
                self.weight_decay * *parameter
            } else {
                0.0
            };
            *parameter -= self.learning_rate * (update + decay);
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(1 + e^z)`, without overflow.
fn softplus(z: f32) -> f32 {
    z.max(0.0) + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learning::simulation::random_unit;

    fn triples(random: &mut SplitMix, dimension: usize, count: usize) -> Vec<Triple> {
        (0..count)
            .map(|i| Triple {
                query: random_unit(random, dimension),
                image: random_unit(random, dimension),
                clicked: i % 3 == 0,
                weight: 1.0 + (i % 4) as f32,
            })
            .collect()
    }

    #[test]
    fn a_new_adapter_is_the_identity() {
        let mut random = SplitMix::new(1);
        let adapter = QueryAdapter::new(16, 4, 1.0, 7);
        let query = random_unit(&mut random, 16);
        assert!(adapter.adapt(&query).cosine(&query) > 0.99999);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut random = SplitMix::new(2);
        let batch = triples(&mut random, 12, 9);
        let mut adapter = QueryAdapter::new(12, 3, 0.7, 3);
        // Away from U = 0, where every path carries a gradient.
        adapter.up = (0..36).map(|_| random.unit() - 0.5).collect();
        adapter.bias = -0.3;
        let analytic = adapter.gradient(batch.iter());
        let analytic: Vec<f32> = analytic
            .down
            .iter()
            .chain(&analytic.up)
            .chain([&analytic.scale, &analytic.bias])
            .copied()
            .collect();
        let epsilon = 1e-3;
        for (i, expected) in analytic.iter().enumerate() {
            let nudged = |delta: f32| {
                let mut copy = adapter.clone();
                let parameter = copy
                    .down
                    .iter_mut()
                    .chain(&mut copy.up)
                    .chain([&mut copy.scale, &mut copy.bias])
                    .nth(i)
                    .unwrap();
                *parameter += delta;
                f64::from(copy.loss(&batch))
            };
            let numeric =
                ((nudged(epsilon) - nudged(-epsilon)) / (2.0 * f64::from(epsilon))) as f32;
            assert!(
                (numeric - expected).abs() <= 2e-3 + 2e-2 * expected.abs(),
                "parameter {i}: finite difference {numeric}, gradient {expected}"
            );
        }
    }

    #[test]
    fn stored_adapters_round_trip_and_broken_ones_are_refused() {
        let adapter = QueryAdapter::new(8, 2, 1.5, 11);
        let json = serde_json::to_string(&adapter).unwrap();
        assert_eq!(
            serde_json::from_str::<QueryAdapter>(&json).unwrap(),
            adapter
        );
        let mut file: serde_json::Value = serde_json::from_str(&json).unwrap();
        file["up"] = serde_json::json!([1.0]);
        let error = serde_json::from_value::<QueryAdapter>(file).unwrap_err();
        assert!(error.to_string().contains("needs 16 values"), "{error}");
    }
}
