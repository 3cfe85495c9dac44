//! Where model files come from: a local Hugging Face checkpoint directory, or a Hub repository
//! downloaded (with a progress bar) into the standard Hugging Face cache at a pinned revision.

use std::io::Read;
use std::path::{Path, PathBuf};

use glimpse_core::EncoderId;
use hf_hub::{Cache, Repo, RepoType, api::sync::ApiBuilder};
use sha2::{Digest, Sha256};

use crate::encoder::EncoderError;

/// The encoder Glimpse uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";
/// The pinned commit of [`DEFAULT_MODEL`] (the one that carries `model.safetensors`), so that
/// embeddings never drift under an index.
pub const DEFAULT_REVISION: &str = "c237dc49a33fc61debc9276459120b7eac67e7ef";

/// The files a CLIP-family checkpoint needs.
const CHECKPOINT_FILES: [&str; 4] = [
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "model.safetensors",
];

/// A checkpoint on this machine and the id of the encoder it makes.
#[derive(Clone, Debug)]
pub struct LocalModel {
    /// The directory holding config.json, model.safetensors, …
    pub directory: PathBuf,
    /// `family:repository@revision`; for a local directory the revision is a hash of its files.
    pub id: EncoderId,
}

/// Resolves `spec`, a directory or a Hub repository (`owner/name`, optionally `@revision`), to a
/// checkpoint on this machine, downloading it when it is not cached yet.
pub fn resolve(spec: &str) -> Result<LocalModel, EncoderError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return local(path);
    }
    let (repository, revision) = match spec.split_once('@') {
        Some((repository, revision)) => (repository, revision.to_owned()),
        None if spec == DEFAULT_MODEL => (spec, DEFAULT_REVISION.to_owned()),
        None => (spec, "main".to_owned()),
    };
    let looks_like_repo = repository.split('/').count() == 2
        && repository.split('/').all(|part| !part.is_empty())
        && !spec.starts_with(['.', '/', '~']);
    if !looks_like_repo {
        return Err(EncoderError::BadModel(format!(
            "`{spec}` is neither a model directory nor a Hugging Face repository id like \
             `{DEFAULT_MODEL}`"
        )));
    }
    from_hub(repository, &revision)
}

fn family_of(directory: &Path) -> Result<String, EncoderError> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        model_type: Option<String>,
    }
    let path = directory.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        EncoderError::BadModel(format!(
            "{} is not a model directory: cannot read config.json ({e})",
            directory.display()
        ))
    })?;
    let config: ModelType = serde_json::from_str(&text)
        .map_err(|e| EncoderError::BadModel(format!("{}: {e}", path.display())))?;
    match config.model_type.as_deref() {
        Some("clip") => Ok("clip".to_owned()),
        other => Err(EncoderError::BadModel(format!(
            "{}: model_type {other:?} is not supported; supported: \"clip\"",
            path.display()
        ))),
    }
}

fn local(directory: &Path) -> Result<LocalModel, EncoderError> {
    let family = family_of(directory)?;
    let directory = directory
        .canonicalize()
        .map_err(|e| EncoderError::BadModel(format!("{}: {e}", directory.display())))?;
    let name = directory
        .file_name()
        .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
    let id = EncoderId::new(
        family,
        format!("local/{name}"),
        content_revision(&directory)?,
    )
    .map_err(|e| EncoderError::BadModel(e.to_string()))?;
    Ok(LocalModel { directory, id })
}

/// The first 16 hex digits of a SHA-256 over the checkpoint files' names and contents: a local
/// checkpoint's id changes exactly when its files do.
fn content_revision(directory: &Path) -> Result<String, EncoderError> {
    let mut hasher = Sha256::new();
    for name in CHECKPOINT_FILES {
        let path = directory.join(name);
        let Ok(mut file) = std::fs::File::open(&path) else {
            continue;
        };
        hasher.update(name.as_bytes());
        let mut buffer = vec![0; 1 << 20];
        loop {
            let read = file.read(&mut buffer).map_err(|e| {
                EncoderError::BadModel(format!("cannot read {}: {e}", path.display()))
            })?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
    }
    let digest = hasher.finalize();
    Ok(digest[..8].iter().map(|b| format!("{b:02x}")).collect())
}

fn offline_hint(repository: &str, revision: &str) -> String {
    format!(
        "download it on a machine that is online (`hf download {repository} --revision \
         {revision}`, or `git clone https://huggingface.co/{repository}`), copy the directory \
         here and pass it with `--model /path/to/that/directory`; or point HF_HOME at a \
         Hugging Face cache that holds it"
    )
}

/// The checkpoint files already in the Hugging Face cache: found through `refs/<revision>` (what
/// hf-hub writes) or, for a commit hash, directly in `snapshots/<commit>/` (what Python's
/// huggingface_hub writes for a pinned commit).
fn cached_files(cache: &Cache, repo: &Repo) -> Vec<PathBuf> {
    let through_refs = cache.repo(repo.clone());
    let snapshot = cache
        .path()
        .join(repo.folder_name())
        .join("snapshots")
        .join(repo.revision());
    let is_commit =
        repo.revision().len() == 40 && repo.revision().bytes().all(|b| b.is_ascii_hexdigit());
    CHECKPOINT_FILES
        .iter()
        .filter_map(|file| {
            through_refs.get(file).or_else(|| {
                let path = snapshot.join(file);
                (is_commit && path.exists()).then_some(path)
            })
        })
        .collect()
}

fn from_hub(repository: &str, revision: &str) -> Result<LocalModel, EncoderError> {
    let repo = Repo::with_revision(repository.to_owned(), RepoType::Model, revision.to_owned());
    let mut paths = cached_files(&Cache::from_env(), &repo);
    if paths.len() < CHECKPOINT_FILES.len() {
        if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
            return Err(EncoderError::Unavailable(format!(
                "{repository}@{revision} is not in the Hugging Face cache and HF_HUB_OFFLINE is \
                 set: {}",
                offline_hint(repository, revision)
            )));
        }
        eprintln!(
            "Downloading {repository}@{revision} from the Hugging Face Hub (first run only)…"
        );
        let api = ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .map_err(|e| EncoderError::Unavailable(format!("cannot start a download: {e}")))?;
        let remote = api.repo(repo);
        paths = CHECKPOINT_FILES
            .iter()
            .map(|file| {
                remote.get(file).map_err(|e| {
                    EncoderError::Unavailable(format!(
                        "could not download {file} of {repository}@{revision} ({e}); if this \
                         machine is offline, {}",
                        offline_hint(repository, revision)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
    }
    // Files live in snapshots/<commit>/: the commit is the immutable revision even when the
    // request named a branch.
    let directory = paths[0]
        .parent()
        .ok_or_else(|| EncoderError::Internal("cached file without a directory".into()))?
        .to_path_buf();
    let commit = directory
        .file_name()
        .map_or_else(|| revision.to_owned(), |n| n.to_string_lossy().into_owned());
    let id = EncoderId::new(family_of(&directory)?, repository, commit)
        .map_err(|e| EncoderError::BadModel(e.to_string()))?;
    Ok(LocalModel { directory, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_specs_that_are_neither_directory_nor_repository() {
        for spec in ["./no/such/dir", "/no/such/dir", "just-a-name", "a/b/c"] {
            let error = resolve(spec).unwrap_err();
            assert!(
                matches!(&error, EncoderError::BadModel(m) if m.contains("neither")),
                "{spec}: {error:?}"
            );
        }
    }
}
