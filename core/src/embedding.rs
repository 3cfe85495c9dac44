use serde::{Deserialize, Serialize};

/// A unit-length vector produced by an encoder. Cosine similarity between two embeddings of the
/// same encoder is their dot product.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Embedding(Vec<f32>);

/// Why a vector cannot become an [`Embedding`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbeddingError {
    /// The vector has no direction (all zeros) or holds NaN/infinite values.
    #[error("the vector cannot be normalised: its norm is zero or not finite")]
    NotNormalisable,
    /// The vector is empty.
    #[error("the vector is empty")]
    Empty,
}

impl Embedding {
    /// Scales `values` to unit length (L2 norm, accumulated in f64).
    pub fn normalized(mut values: Vec<f32>) -> Result<Self, EmbeddingError> {
        if values.is_empty() {
            return Err(EmbeddingError::Empty);
        }
        let norm = values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(EmbeddingError::NotNormalisable);
        }
        let scale = (1.0 / norm) as f32;
        values.iter_mut().for_each(|v| *v *= scale);
        Ok(Self(values))
    }

    /// The components; their squares sum to 1 (within f32 rounding).
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    /// The number of components.
    pub fn dimension(&self) -> usize {
        self.0.len()
    }

    /// Cosine similarity with another embedding of the same dimension.
    ///
    /// # Panics
    /// If the dimensions differ: such vectors come from different encoders and comparing them
    /// is a bug.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        assert_eq!(
            self.dimension(),
            other.dimension(),
            "embeddings of different encoders"
        );
        self.0.iter().zip(&other.0).map(|(a, b)| a * b).sum()
    }

    /// Gives the components back.
    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Embedding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let values = Vec::<f32>::deserialize(deserializer)?;
        Self::normalized(values).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_unit_length() {
        let e = Embedding::normalized(vec![3.0, 4.0]).unwrap();
        assert_eq!(e.as_slice(), &[0.6, 0.8]);
        assert!((e.cosine(&e) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rejects_vectors_without_direction() {
        assert_eq!(Embedding::normalized(vec![]), Err(EmbeddingError::Empty));
        assert_eq!(
            Embedding::normalized(vec![0.0, 0.0]),
            Err(EmbeddingError::NotNormalisable)
        );
        assert_eq!(
            Embedding::normalized(vec![f32::NAN, 1.0]),
            Err(EmbeddingError::NotNormalisable)
        );
    }
}
