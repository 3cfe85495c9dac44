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

/// One revision of a Hub repository: its files from the Hugging Face cache, downloaded (with a
/// progress bar) when missing.
struct HubRevision {
    repository: String,
    revision: String,
    repo: Repo,
    remote: std::cell::OnceCell<hf_hub::api::sync::ApiRepo>,
}

impl HubRevision {
    fn new(repository: &str, revision: &str) -> Self {
        Self {
            repository: repository.to_owned(),
            revision: revision.to_owned(),
            repo: Repo::with_revision(repository.to_owned(), RepoType::Model, revision.to_owned()),
            remote: std::cell::OnceCell::new(),
        }
    }

    /// A file already in the Hugging Face cache: found through `refs/<revision>` (what hf-hub
    /// writes) or, for a commit hash, directly in `snapshots/<commit>/` (what Python's
    /// huggingface_hub writes for a pinned commit).
    fn cached(&self, file: &str) -> Option<PathBuf> {
        let cache = Cache::from_env();
        let revision = self.repo.revision();
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        cache.repo(self.repo.clone()).get(file).or_else(|| {
            let path = cache
                .path()
                .join(self.repo.folder_name())
                .join("snapshots")
                .join(revision)
                .join(file);
            (is_commit && path.exists()).then_some(path)
        })
    }

    /// `file`, from the cache or else downloaded.
    fn file(&self, file: &str) -> Result<PathBuf, EncoderError> {
        if let Some(path) = self.cached(file) {
            return Ok(path);
        }
        let (repository, revision) = (&self.repository, &self.revision);
        if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
            return Err(EncoderError::Unavailable(format!(
                "{file} of {repository}@{revision} is not in the Hugging Face cache and \
                 HF_HUB_OFFLINE is set: {}",
                offline_hint(repository, revision)
            )));
        }
        let remote = match self.remote.get() {
            Some(remote) => remote,
            None => {
                let api = ApiBuilder::from_env()
                    .with_progress(true)
                    .build()
                    .map_err(|e| {
                        EncoderError::Unavailable(format!("cannot start a download: {e}"))
                    })?;
                self.remote.get_or_init(|| api.repo(self.repo.clone()))
            }
        };
        eprintln!("Downloading {file} of {repository}@{revision} from the Hugging Face Hub…");
        remote.get(file).map_err(|e| {
            EncoderError::Unavailable(format!(
                "could not download {file} of {repository}@{revision} ({e}); if this machine is \
                 offline, {}",
                offline_hint(repository, revision)
            ))
        })
    }
}

/// Files live in snapshots/<commit>/: the commit is the immutable revision even when the request
/// named a branch.
fn snapshot_of(path: &Path, revision: &str) -> Result<(PathBuf, String), EncoderError> {
    let directory = path
        .parent()
        .ok_or_else(|| EncoderError::Internal("cached file without a directory".into()))?
        .to_path_buf();
    let commit = directory
        .file_name()
        .map_or_else(|| revision.to_owned(), |n| n.to_string_lossy().into_owned());
    Ok((directory, commit))
}

fn from_hub(repository: &str, revision: &str) -> Result<LocalModel, EncoderError> {
    let hub = HubRevision::new(repository, revision);
    let paths = CHECKPOINT_FILES
        .iter()
        .map(|file| hub.file(file))
        .collect::<Result<Vec<_>, _>>()?;
    let (directory, commit) = snapshot_of(&paths[0], revision)?;
    let id = EncoderId::new(family_of(&directory)?, repository, commit)
        .map_err(|e| EncoderError::BadModel(e.to_string()))?;
    Ok(LocalModel { directory, id })
}

/// The reranker Glimpse runs when one is asked for without a model.
pub const DEFAULT_RERANKER: &str = "Qwen/Qwen2-VL-2B-Instruct";

/// Resolves the reranker's `spec` (a directory, or a Hub repository `owner/name[@revision]`) to a
/// Qwen2-VL checkpoint directory on this machine, downloading what is missing: config.json,
/// tokenizer.json and the weights (`model.safetensors`, or the shards its index lists).
pub fn resolve_reranker(spec: &str) -> Result<PathBuf, EncoderError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let (repository, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let looks_like_repo = repository.split('/').count() == 2
        && repository.split('/').all(|part| !part.is_empty())
        && !spec.starts_with(['.', '/', '~']);
    if !looks_like_repo {
        return Err(EncoderError::BadModel(format!(
            "the reranker `{spec}` is neither a model directory nor a Hugging Face repository id \
             like `{DEFAULT_RERANKER}`"
        )));
    }
    let hub = HubRevision::new(repository, revision);
    let config = hub.file("config.json")?;
    hub.file("tokenizer.json")?;
    match hub.file("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shard_files(&index)? {
                hub.file(&shard)?;
            }
        }
        Err(EncoderError::Unavailable(_)) if hub.file("model.safetensors").is_ok() => {}
        Err(error) => return Err(error),
    }
    Ok(snapshot_of(&config, revision)?.0)
}

/// The shard files a `model.safetensors.index.json` lists, each once.
pub fn shard_files(index: &Path) -> Result<Vec<String>, EncoderError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index)
        .map_err(|e| EncoderError::BadModel(format!("cannot read {}: {e}", index.display())))?;
    let index_json: Index = serde_json::from_str(&text)
        .map_err(|e| EncoderError::BadModel(format!("{}: {e}", index.display())))?;
    let mut files: Vec<String> = index_json.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    Ok(files)
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
