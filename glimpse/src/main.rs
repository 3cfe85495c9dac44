//! The `glimpse` command: the embedded engine (`serve`, `index`, `search`, …), a worker of the
//! pool (`worker`), and the benchmarks. Each subcommand has its module in `commands/`.

mod commands;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use commands::DataDirArgs;
use commands::adapters::AdaptersArgs;
use commands::bench::BenchCommand;
use commands::check::CheckArgs;
use commands::embed::EmbedArgs;
use commands::encoders::EncodersArgs;
use commands::index::IndexArgs;
use commands::retry::RetryArgs;
use commands::search::SearchArgs;
use commands::serve::ServeArgs;
use commands::train::TrainArgs;
use commands::worker::WorkerArgs;

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
    /// Index a photo folder and serve search over HTTP (the main command).
    Serve(ServeArgs),
    /// Index a photo folder once, with a progress bar, then print a summary.
    Index(IndexArgs),
    /// Search a data directory from the command line.
    Search(SearchArgs),
    /// Show what a data directory holds and how far indexing got.
    Status(DataDirArgs),
    /// Compare the catalog with the vector index (of a data directory, or of the worker pool's
    /// Postgres and Qdrant with --config) and, with --repair, bring them in line.
    Check(CheckArgs),
    /// Put failed photos back in the indexing queue (after fixing what made them fail).
    Retry(RetryArgs),
    /// List the query adapters learned from clicks, activate one (an older one too), or train.
    Adapters(AdaptersArgs),
    /// List the worker pool's encoders, or choose the one it searches and indexes with.
    Encoders(EncodersArgs),
    /// Run a member of the worker pool: the internal API for the edge functions and, with the
    /// managed backends configured, the feature-job consumer.
    Worker(WorkerArgs),
    /// Print the embedding of texts or images as JSON, one line per input.
    Embed(EmbedArgs),
    /// Train a LoRA adapter of the vision-language reranker on (query, photo, label) triples or
    /// on the clicks of a data directory's search log.
    Train(TrainArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
    };
    match cli.command {
        Command::Serve(args) => runtime()?.block_on(commands::serve::serve(args)),
        Command::Index(args) => runtime()?.block_on(commands::index::index(args)),
        Command::Search(args) => runtime()?.block_on(commands::search::search(args)),
        Command::Status(args) => runtime()?.block_on(commands::status::status(args)),
        Command::Check(args) => runtime()?.block_on(commands::check::check(args)),
        Command::Retry(args) => runtime()?.block_on(commands::retry::retry(args)),
        Command::Adapters(args) => runtime()?.block_on(commands::adapters::adapters(args)),
        Command::Encoders(args) => runtime()?.block_on(commands::encoders::encoders(args)),
        Command::Worker(args) => runtime()?.block_on(commands::worker::worker(args)),
        Command::Embed(args) => commands::embed::embed(&args),
        Command::Train(args) => runtime()?.block_on(commands::train::train(args)),
        Command::Bench(command) => commands::bench::run(command, runtime),
    }
}
