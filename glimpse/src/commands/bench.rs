//! `glimpse bench`: performance measurements.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use glimpse::adapters::{IndexTuning, Originals};
use glimpse::bench;
use glimpse::memory::MemoryBudget;
use glimpse_worker::encoder::{ClipEncoder, ImageTextEncoder, Precision};
use glimpse_worker::worker::settings::WorkerSettings;

use super::{load_encoder, print_report};

#[derive(Args)]
pub struct AnnArgs {
    /// How many vectors.
    #[arg(long, default_value_t = 1_000_000)]
    pub vectors: usize,
    /// Their dimension.
    #[arg(long, default_value_t = 512)]
    pub dim: usize,
    /// Queries measured (each run twice; the second pass is timed).
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Vectors per cluster.
    #[arg(long, default_value_t = 100)]
    pub per_cluster: usize,
    /// Uniform random unit vectors (the worst case) instead of clusters.
    #[arg(long)]
    pub uniform: bool,
    /// HNSW graph degree.
    #[arg(long, default_value_t = 16)]
    pub m: usize,
    /// HNSW build candidate list.
    #[arg(long, default_value_t = 100)]
    pub ef_construct: usize,
    /// HNSW search candidate list.
    #[arg(long, default_value_t = 128)]
    pub ef: usize,
    /// Keep f32 vectors in RAM instead of int8 in RAM + f32 on disk.
    #[arg(long)]
    pub no_quantization: bool,
    /// Vectors per upsert (the library indexer upserts one indexing round at a time, 16).
    #[arg(long, default_value_t = 10_000)]
    pub upsert_batch: usize,
    /// The memory budget the index is tuned for, as `glimpse serve --memory-budget`.
    #[arg(long, default_value_t = MemoryBudget::DEFAULT)]
    pub memory_budget: MemoryBudget,
    /// Build the graph of every this many new vectors while upserting (default: what the
    /// budget implies; 0: all at the end).
    #[arg(long)]
    pub build_every: Option<usize>,
    /// The largest segment, in vectors (default: what the budget implies; 0: the engine's
    /// default).
    #[arg(long)]
    pub max_segment_vectors: Option<usize>,
    /// Search candidate lists measured too, after --ef (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub other_ef: Vec<usize>,
    /// Threads that build a graph (0: every core).
    #[arg(long, default_value_t = 0)]
    pub indexing_threads: usize,
    /// Threads that search segments in parallel (0: the engine's choice, four per core).
    #[arg(long, default_value_t = 0)]
    pub search_threads: usize,
    /// Search thread counts measured too, each on the index opened again (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub other_search_threads: Vec<usize>,
    /// Store the original vectors as f32, as indexes created before half floats do.
    #[arg(long)]
    pub f32_originals: bool,
    /// Then convert the built index to half floats, as `glimpse serve` converts such an index
    /// when it opens it, measure the conversion and search the converted index.
    #[arg(long, requires = "f32_originals")]
    pub convert: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl AnnArgs {
    fn options(&self) -> bench::ann::AnnOptions {
        let originals = if self.f32_originals {
            Originals::F32
        } else {
            IndexTuning::default().originals
        };
        let budgeted = IndexTuning::within(self.memory_budget, self.dim).for_originals(originals);
        let chosen = |given: Option<usize>, implied: Option<usize>| match given {
            Some(0) => None,
            Some(given) => Some(given),
            None => implied,
        };
        let tuning = IndexTuning {
            m: self.m,
            ef_construct: self.ef_construct,
            search_ef: self.ef,
            quantized: !self.no_quantization,
            build_every: chosen(self.build_every, budgeted.build_every),
            max_segment_vectors: chosen(self.max_segment_vectors, budgeted.max_segment_vectors),
            indexing_threads: self.indexing_threads,
            search_threads: self.search_threads,
            originals,
        };
        bench::ann::AnnOptions {
            vectors: self.vectors,
            dimension: self.dim,
            per_cluster: self.per_cluster,
            uniform: self.uniform,
            queries: self.queries,
            tuning,
            upsert_batch: self.upsert_batch,
            other_ef: self.other_ef.clone(),
            other_search_threads: self.other_search_threads.clone(),
            rewrite_to: self
                .convert
                .then(|| tuning.for_originals(IndexTuning::default().originals)),
            seed: 7,
        }
    }
}

/// The encoder a benchmark runs.
#[derive(Args)]
pub struct BenchModel {
    /// A model directory or Hub repository; default: ViT-B/32 with seeded random weights.
    #[arg(long)]
    model: Option<String>,
    /// How precisely the CPU runs the model: auto, f32, bf16 or int8.
    #[arg(long, default_value = "auto")]
    precision: Precision,
}

impl BenchModel {
    fn load(&self) -> Result<ClipEncoder> {
        match &self.model {
            Some(spec) => load_encoder(spec, self.precision),
            None => Ok(bench::random_vit_b32(0, self.precision)?),
        }
    }
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The vector index: build time, memory, latency and recall@10 on synthetic embeddings.
    Ann(AnnArgs),
    /// The whole search flow, server-side, over an index of synthetic embeddings.
    Search {
        #[command(flatten)]
        index: AnnArgs,
        /// Searches measured.
        #[arg(long, default_value_t = 500)]
        searches: usize,
        /// Results per search.
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// Score with a rank-8 query adapter (as learning from clicks does), to measure its cost.
        #[arg(long)]
        adapter: bool,
        /// Searches run before the measured ones (not measured).
        #[arg(long, default_value_t = bench::ann::QUERIES.len())]
        warm_up: usize,
        /// Make every search's text one never searched before (its query with the search's
        /// number appended), as a server sees people's searches: the index pages each touches
        /// are new until the index is resident. By default the twelve queries are cycled.
        #[arg(long)]
        distinct: bool,
        #[command(flatten)]
        model: BenchModel,
    },
    /// One pool worker's indexing throughput end to end, and the job queue's cost per job, on
    /// the worker's configured Postgres, S3 and Qdrant (in a scratch schema, collection and keys
    /// of its own, removed afterwards).
    Pool {
        /// The worker's settings file (as `glimpse worker --config`); `GLIMPSE__…` variables too.
        #[arg(long, env = "GLIMPSE__CONFIG")]
        config: Option<PathBuf>,
        /// Synthetic 12 MP JPEGs indexed end to end.
        #[arg(long, default_value_t = 64)]
        photos: usize,
        /// Jobs claimed and finished for the queue's own cost.
        #[arg(long, default_value_t = 2000)]
        queue_jobs: usize,
        #[command(flatten)]
        model: BenchModel,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// `glimpse serve` under load, from outside over HTTP: search latency while it scans a
    /// generated library for the first time, then a soak of mixed search, browse and thumbnail
    /// traffic (any `glimpse` binary, for a before/after).
    Serve {
        /// The `glimpse` binary to measure (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The model directory it serves with (e.g. tests/reference/checkpoints/clip-odd).
        #[arg(long)]
        model: String,
        /// Photos in the generated library.
        #[arg(long, default_value_t = 20_000)]
        files: usize,
        /// Seconds of soak.
        #[arg(long, default_value_t = 120)]
        soak_seconds: u64,
        /// Concurrent soak clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// `glimpse index` on a folder of distinct 12 MP JPEGs with the ViT-B/32-shaped model (seeded
    /// random weights), end to end, run as a process and timed from outside.
    Index {
        /// The `glimpse` binary to measure (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Photos in the generated library.
        #[arg(long, default_value_t = 96)]
        photos: usize,
        /// The precision `glimpse index` runs at: auto, f32, bf16 or int8.
        #[arg(long, default_value = "auto")]
        precision: Precision,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The CPU learner: training time for 10,000 click triples of 512 dimensions, and ranking
    /// quality trained with and without position-bias correction on a simulated click log.
    Learner {
        /// Training runs timed (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The vision-language reranker: latency of one search's candidates, training pairs per
    /// second, and the FLOPs of the same search on Qwen2-VL-2B with its estimated GPU latency.
    Rerank {
        /// A Qwen2-VL checkpoint: a directory (e.g. tests/reference/checkpoints/qwen2-vl-tiny)
        /// or a Hub repository id (e.g. Qwen/Qwen2-VL-2B-Instruct, downloaded on first use).
        #[arg(long)]
        model: String,
        /// Candidates per search.
        #[arg(long, default_value_t = 10)]
        candidates: usize,
        /// Pixels per candidate at inference, in 28 × 28 tokens.
        #[arg(long, default_value_t = 144)]
        image_tokens: usize,
        /// Pixels per photo in training, in 28 × 28 tokens.
        #[arg(long, default_value_t = 256)]
        train_image_tokens: usize,
        /// Searches timed (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Training steps of 8 pairs timed.
        #[arg(long, default_value_t = 5)]
        train_steps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Text latency and end-to-end image throughput of the encoder.
    Encode {
        #[command(flatten)]
        model: BenchModel,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Repeat every measurement this many times more (steadier figures, longer run).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Vectors of the generated library in which the top 10 of the f32 and the measured
        /// precision are compared (unless --precision f32).
        #[arg(long, default_value_t = 1_000_000)]
        library_vectors: usize,
    },
}

pub async fn bench_ann(args: AnnArgs) -> Result<()> {
    let report = bench::ann::ann(&args.options())
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, args.json)
}

pub async fn bench_search(
    args: AnnArgs,
    flow: bench::ann::SearchOptions,
    model: BenchModel,
) -> Result<()> {
    let encoder: Arc<dyn ImageTextEncoder> = Arc::new(model.load()?);
    let report = bench::ann::search(&args.options(), encoder, &flow)
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, args.json)
}

pub async fn bench_pool(
    config: Option<PathBuf>,
    options: bench::pool::PoolBenchOptions,
    model: BenchModel,
    json_output: bool,
) -> Result<()> {
    let settings = WorkerSettings::load(config.as_deref(), std::env::vars())?;
    let Some(backends) = settings.backends() else {
        bail!(
            "bench pool runs on the worker's backends: configure [database], [s3] and [qdrant] \
             (a --config file or GLIMPSE__DATABASE__URL, GLIMPSE__S3__…, GLIMPSE__QDRANT__URL)"
        );
    };
    let encoder: Arc<dyn ImageTextEncoder> = Arc::new(model.load()?);
    let options = bench::pool::PoolBenchOptions {
        batch: settings.worker.batch,
        ..options
    };
    let report = bench::pool::pool(&backends, encoder, options)
        .await
        .map_err(anyhow::Error::msg)?;
    print_report(&report, json_output)
}

pub fn bench_encode(
    model: &BenchModel,
    json_output: bool,
    rounds: usize,
    library_vectors: usize,
) -> Result<()> {
    let encoder = model.load()?;
    let report = bench::encode(&encoder, rounds)?;
    let accuracy = if model.precision == Precision::F32 {
        None
    } else {
        let reference = BenchModel {
            model: model.model.clone(),
            precision: Precision::F32,
        }
        .load()?;
        let accuracy = bench::accuracy(&encoder, &reference, 8, library_vectors)
            .map_err(anyhow::Error::msg)?;
        Some(accuracy)
    };
    if json_output {
        let line = serde_json::json!({
            "precision": model.precision,
            "runs_in": encoder.precision(),
            "speed": report,
            "accuracy_vs_f32": accuracy,
        });
        println!("{line}");
        return Ok(());
    }
    println!("precision: {} ({})", model.precision, encoder.precision());
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
    if let Some(accuracy) = accuracy {
        println!("against f32: {}", serde_json::to_string_pretty(&accuracy)?);
    }
    Ok(())
}

/// Runs a benchmark; `runtime` starts the async runtime for those that need one.
pub fn run(
    command: BenchCommand,
    runtime: impl Fn() -> Result<tokio::runtime::Runtime>,
) -> Result<()> {
    match command {
        BenchCommand::Ann(args) => runtime()?.block_on(bench_ann(args)),
        BenchCommand::Search {
            index,
            searches,
            top_k,
            adapter,
            warm_up,
            distinct,
            model,
        } => {
            let flow = bench::ann::SearchOptions {
                searches,
                top_k,
                adapter,
                warm_up,
                distinct,
            };
            runtime()?.block_on(bench_search(index, flow, model))
        }
        BenchCommand::Pool {
            config,
            photos,
            queue_jobs,
            model,
            json,
        } => runtime()?.block_on(bench_pool(
            config,
            bench::pool::PoolBenchOptions {
                photos: photos.max(1),
                queue_jobs: queue_jobs.max(2),
                batch: 32,
            },
            model,
            json,
        )),
        BenchCommand::Serve {
            binary,
            model,
            files,
            soak_seconds,
            clients,
            json,
        } => {
            let options = bench::serve::ServeBenchOptions {
                binary: match binary {
                    Some(binary) => binary,
                    None => std::env::current_exe()?,
                },
                model,
                files: files.max(1),
                soak: Duration::from_secs(soak_seconds),
                clients,
            };
            let report = bench::serve::run(&options).map_err(anyhow::Error::msg)?;
            print_report(&report, json)
        }
        BenchCommand::Index {
            binary,
            photos,
            precision,
            json,
        } => {
            let options = bench::index::IndexBenchOptions {
                binary: match binary {
                    Some(binary) => binary,
                    None => std::env::current_exe()?,
                },
                photos: photos.max(1),
                precision,
            };
            print_report(
                &bench::index::run(&options).map_err(anyhow::Error::msg)?,
                json,
            )
        }
        BenchCommand::Rerank {
            model,
            candidates,
            image_tokens,
            train_image_tokens,
            rounds,
            train_steps,
            json,
        } => {
            let directory = glimpse_worker::hub::resolve_reranker(&model)?;
            let options = bench::rerank::RerankBenchOptions {
                candidates,
                image_tokens,
                train_image_tokens,
                rounds,
                train_steps,
            };
            print_report(&bench::rerank::run(&directory, &options)?, json)
        }
        BenchCommand::Learner { rounds, json } => {
            print_report(&bench::learner::learner(rounds), json)
        }
        BenchCommand::Encode {
            model,
            json,
            rounds,
            library_vectors,
        } => bench_encode(&model, json, rounds, library_vectors),
    }
}
