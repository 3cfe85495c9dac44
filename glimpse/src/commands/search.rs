//! `glimpse search`: search a data directory from the command line.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use glimpse_core::search::SearchRequest;

use super::{DataDirArgs, ModelArgs, open_engine};

#[derive(Args)]
pub struct SearchArgs {
    /// The query, e.g. "beach at dusk -people album:Trips".
    pub query: String,
    #[command(flatten)]
    pub data: DataDirArgs,
    /// How many results.
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Leave out results scoring below this.
    #[arg(long)]
    pub min_score: Option<f32>,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn search(args: SearchArgs) -> Result<()> {
    let engine = open_engine(&args.data, None, ModelArgs::default(), None).await?;
    let request = SearchRequest {
        query: args.query,
        top_k: args.top_k,
        min_score: args.min_score,
        offset: 0,
    };
    let response = engine.search(&request).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    if response.results.is_empty() {
        println!("No results.");
    }
    let library = engine.library().map(Path::to_path_buf);
    for result in &response.results {
        let location = match (&result.photo.origin, &library) {
            (glimpse_core::photo::Origin::Library(path), Some(root)) => {
                root.join(path).display().to_string()
            }
            (origin, _) => origin.blob_key(),
        };
        println!(
            "{:>3}  {:>6.2}  {}  {}",
            result.rank, result.score, result.photo.id, location
        );
    }
    println!(
        "{} results in {:.1} ms (search id {})",
        response.results.len(),
        response.timings.total_ms,
        response.query_id
    );
    Ok(())
}
