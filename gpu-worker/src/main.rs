//! The `glimpse` command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use glimpse_worker::encoder::{ClipEncoder, ImageTextEncoder, JpegDecode};
use glimpse_worker::{bench, hub};
use serde_json::json;

/// Tensors of several megabytes are allocated and freed for every batch; mimalloc keeps that
/// memory mapped instead of returning it to the kernel and faulting it in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "glimpse", version, about = "Self-hosted AI photo search")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the embedding of texts or images as JSON, one line per input.
    Embed(EmbedArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct EmbedArgs {
    /// A model directory (Hugging Face layout) or a Hub repository id, optionally `@revision`.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// A text to embed (repeatable).
    #[arg(long)]
    text: Vec<String>,
    /// An image file to embed (repeatable).
    #[arg(long)]
    image: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Text latency and end-to-end image throughput of the encoder.
    Encode {
        /// A model directory or Hub repository; default: ViT-B/32 with seeded random weights.
        #[arg(long)]
        model: Option<String>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Repeat every measurement this many times more (steadier figures, longer run).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Decode JPEGs in PIL's draft mode (DCT-domain downscaling; faster, not bit-equal).
        #[arg(long)]
        jpeg_draft: bool,
    },
}

fn load_encoder(spec: &str) -> Result<ClipEncoder> {
    let model = hub::resolve(spec)?;
    ClipEncoder::load(&model.directory, model.id)
        .with_context(|| format!("loading the model in {}", model.directory.display()))
}

fn embed(args: &EmbedArgs) -> Result<()> {
    if args.text.is_empty() && args.image.is_empty() {
        bail!("nothing to embed: give --text \"…\" or --image FILE (either may be repeated)");
    }
    let encoder = load_encoder(&args.model)?;
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

fn bench_encode(
    model: Option<&str>,
    json_output: bool,
    rounds: usize,
    jpeg_draft: bool,
) -> Result<()> {
    let encoder = match model {
        Some(spec) => load_encoder(spec)?,
        None => bench::random_vit_b32(0)?,
    };
    let encoder = if jpeg_draft {
        encoder.with_jpeg_decode(JpegDecode::Draft)
    } else {
        encoder
    };
    let report = bench::encode(&encoder, rounds)?;
    if json_output {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("encoder: {}", report.encoder);
    for (tokens, ms) in &report.text_p50_ms {
        println!("text, {tokens:>2} tokens, batch 1: p50 {ms:.2} ms");
    }
    for (batch, rate) in &report.image_per_s {
        println!("image, 12 MP JPEG end to end, batch {batch:>2}: {rate:.2} images/s");
    }
    println!(
        "image, decode + preprocess of one 12 MP JPEG: {:.1} ms",
        report.prepare_ms_per_image
    );
    println!(
        "image, encoder only, batch 32: {:.2} images/s",
        report.encode_only_per_s
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Embed(args) => embed(args),
        Command::Bench(BenchCommand::Encode {
            model,
            json,
            rounds,
            jpeg_draft,
        }) => bench_encode(model.as_deref(), *json, *rounds, *jpeg_draft),
    }
}
