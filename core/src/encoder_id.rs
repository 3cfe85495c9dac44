use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Names the exact model that produced a vector: vectors are only comparable when their encoder
/// ids are equal, so an index records the id it was built with.
///
/// The text form is `family:repository@revision`, e.g.
/// `clip:openai/clip-vit-base-patch32@c237dc49a33fc61debc9276459120b7eac67e7ef`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EncoderId {
    family: String,
    repository: String,
    revision: String,
}

/// Why a string is not an [`EncoderId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an encoder id: {reason} (expected `family:repository@revision`)")]
pub struct EncoderIdError {
    text: String,
    reason: &'static str,
}

impl EncoderId {
    /// Builds an id; every part must be non-empty and free of the separators `:` and `@`
    /// (the repository may contain `/`).
    pub fn new(
        family: impl Into<String>,
        repository: impl Into<String>,
        revision: impl Into<String>,
    ) -> Result<Self, EncoderIdError> {
        let id = Self {
            family: family.into(),
            repository: repository.into(),
            revision: revision.into(),
        };
        let parts = [&id.family, &id.repository, &id.revision];
        if parts.iter().any(|part| part.is_empty()) {
            return Err(id.invalid("every part must be non-empty"));
        }
        if parts.iter().any(|part| part.contains([':', '@'])) {
            return Err(id.invalid("a part contains `:` or `@`"));
        }
        if parts
            .iter()
            .any(|part| part.chars().any(char::is_whitespace))
        {
            return Err(id.invalid("a part contains white space"));
        }
        Ok(id)
    }

    fn invalid(&self, reason: &'static str) -> EncoderIdError {
        EncoderIdError {
            text: format!("{}:{}@{}", self.family, self.repository, self.revision),
            reason,
        }
    }

    /// The model family, which decides the architecture and preprocessing (`clip`, `siglip`, …).
    pub fn family(&self) -> &str {
        &self.family
    }

    /// Where the weights come from: a Hub repository (`openai/clip-vit-base-patch32`) or a name
    /// given to a local checkpoint.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The immutable revision of the weights (a Hub commit, or a content hash of local files).
    pub fn revision(&self) -> &str {
        &self.revision
    }
}

impl schemars::JsonSchema for EncoderId {
    fn schema_name() -> String {
        "EncoderId".to_owned()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::schema::Schema {
        crate::text_schema(
            schemars::schema::StringValidation {
                pattern: Some(r"^[^:@\s]+:[^:@\s]+@[^:@\s]+$".to_owned()),
                ..Default::default()
            },
            None,
            "The exact model: `family:repository@revision`.",
        )
    }
}

impl fmt::Display for EncoderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}@{}", self.family, self.repository, self.revision)
    }
}

impl FromStr for EncoderId {
    type Err = EncoderIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = |reason| EncoderIdError {
            text: text.to_owned(),
            reason,
        };
        let (family, rest) = text.split_once(':').ok_or(malformed("no `:`"))?;
        let (repository, revision) = rest.split_once('@').ok_or(malformed("no `@`"))?;
        Self::new(family, repository, revision)
    }
}

impl TryFrom<String> for EncoderId {
    type Error = EncoderIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<EncoderId> for String {
    fn from(id: EncoderId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let id = EncoderId::new("clip", "openai/clip-vit-base-patch32", "c237dc4").unwrap();
        assert_eq!(id.to_string(), "clip:openai/clip-vit-base-patch32@c237dc4");
        assert_eq!(id.to_string().parse::<EncoderId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"clip:openai/clip-vit-base-patch32@c237dc4\"");
        assert_eq!(serde_json::from_str::<EncoderId>(&json).unwrap(), id);
    }

    #[test]
    fn malformed_ids_are_rejected_with_the_expected_form() {
        for text in [
            "clip",
            "clip:repo",
            ":repo@rev",
            "clip:repo@",
            "clip:a@b@c",
            "clip:a b@c",
        ] {
            let error = text.parse::<EncoderId>().unwrap_err().to_string();
            assert!(
                error.contains("family:repository@revision"),
                "{text}: {error}"
            );
        }
    }
}
