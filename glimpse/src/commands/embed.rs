//! `glimpse embed`: print embeddings of texts and images.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use glimpse_worker::encoder::{ImageTextEncoder, Precision};
use glimpse_worker::hub;
use serde_json::json;

use super::load_encoder;

#[derive(Args)]
pub struct EmbedArgs {
    /// A model directory (Hugging Face layout) or a Hub repository id, optionally `@revision`.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    pub model: String,
    /// How precisely the CPU runs the model: auto, f32 or bf16 (see `glimpse serve --help`).
    #[arg(long, env = "GLIMPSE__PRECISION", default_value = "auto")]
    pub precision: Precision,
    /// A text to embed (repeatable).
    #[arg(long)]
    pub text: Vec<String>,
    /// An image file to embed (repeatable).
    #[arg(long)]
    pub image: Vec<PathBuf>,
}

pub fn embed(args: &EmbedArgs) -> Result<()> {
    if args.text.is_empty() && args.image.is_empty() {
        bail!("nothing to embed: give --text \"…\" or --image FILE (either may be repeated)");
    }
    let encoder = load_encoder(&args.model, args.precision)?;
    let (id, dimension) = (encoder.id().to_string(), encoder.dimension());
    let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
    for (text, vector) in texts.iter().zip(encoder.embed_texts(&texts)?) {
        let line = json!({"encoder": id, "dimension": dimension, "text": text, "vector": vector});
        println!("{line}");
    }
    for path in &args.image {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let vector = encoder
            .embed_images(&[&bytes])
            .with_context(|| format!("cannot embed {}", path.display()))?;
        let line =
            json!({"encoder": id, "dimension": dimension, "image": path, "vector": vector[0]});
        println!("{line}");
    }
    Ok(())
}
