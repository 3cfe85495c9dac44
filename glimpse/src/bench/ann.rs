//! `glimpse bench ann` and `glimpse bench search`: the embedded vector index (qdrant-edge behind
//! the VectorIndex port) on seeded synthetic vectors shaped like real embeddings, and the whole
//! search flow over such an index.
//!
//! The clustered set puts one centroid per `per_cluster` vectors and scatters members so they sit
//! near cosine 0.7 to their centroid; queries are drawn the same way around random centroids.
//! Uniform random unit vectors (`--uniform`) are the worst case of every ANN index.

use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use glimpse_core::flows::{self, Ports, RetrievalOrder};
use glimpse_core::learning::{AdapterVersion, Evaluation, ExplorationSettings, QueryAdapter};
use glimpse_core::photo::{
    Facets, ImageFacts, ImageFormat, NewPhotoDetails, Origin, Photo, PhotoId,
};
use glimpse_core::ports::{IndexedPhoto, SearchFilter, VectorIndex};
use glimpse_core::search::{MAX_TOP_K, SearchRequest, StageTimings};
use glimpse_core::{Embedding, EncoderId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use crate::adapters::{IndexTuning, LocalIndex, SqliteCatalog};
use crate::blocking::off_runtime;
use crate::memory::ProcessMemory;
use crate::server::percentiles;
use glimpse_worker::adapters::LocalEncoder;
use glimpse_worker::encoder::ImageTextEncoder;

/// Vectors generated at a time.
const BATCH: usize = 10_000;
/// Exact neighbours compared for recall.
const RECALL_AT: usize = 10;

/// What to build and measure.
#[derive(Clone, Debug)]
pub struct AnnOptions {
    /// How many vectors.
    pub vectors: usize,
    /// Their dimension.
    pub dimension: usize,
    /// Vectors per cluster (clustered set).
    pub per_cluster: usize,
    /// Uniform random unit vectors instead of clusters.
    pub uniform: bool,
    /// Queries measured.
    pub queries: usize,
    /// Index set-up.
    pub tuning: IndexTuning,
    /// Vectors per upsert (the library indexer upserts what one indexing round encoded).
    pub upsert_batch: usize,
    /// Search candidate lists measured besides the tuning's.
    pub other_ef: Vec<usize>,
    /// Search thread counts measured besides the tuning's, each on the index opened again.
    pub other_search_threads: Vec<usize>,
    /// Once built, rewrite the index with this tuning (as `glimpse serve` converts an index of
    /// older originals) and measure the searches on the rewritten one.
    pub rewrite_to: Option<IndexTuning>,
    /// Seed of the generator.
    pub seed: u64,
}

/// The figures of one ANN run.
#[derive(Clone, Debug, Serialize)]
pub struct AnnReport {
    /// Vectors indexed.
    pub vectors: usize,
    /// Dimension.
    pub dimension: usize,
    /// `clustered` or `uniform`.
    pub distribution: &'static str,
    /// Seconds to upsert everything and build the graph.
    pub build_s: f64,
    /// Resident memory of the process after the queries, MB.
    pub rss_mb: f64,
    /// Anonymous memory (heap) after the queries, MB.
    pub anonymous_mb: f64,
    /// Peak resident memory of the process, MB.
    pub peak_rss_mb: f64,
    /// The most anonymous memory seen while building (sampled every 20 ms), MB.
    pub build_peak_anonymous_mb: f64,
    /// The most resident pages of mapped files seen while building, MB.
    pub build_peak_file_mb: f64,
    /// Segments of the index searched.
    pub segments: usize,
    /// The rewrite of the built index, if one was asked for.
    pub rewrite: Option<RewriteReport>,
    /// Vectors per upsert.
    pub upsert_batch: usize,
    /// Vectors whose graph is built at a time while upserting (0: all at the end).
    pub build_every: usize,
    /// The largest segment, in vectors (0: the engine's default).
    pub max_segment_vectors: usize,
    /// Latency of one top-10 query, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean fraction of the exact top 10 found.
    pub recall_at_10: f64,
    /// The same queries with other search candidate lists.
    pub other_ef: Vec<Pass>,
    /// The same queries with other search thread counts (at the tuning's candidate list).
    pub other_search_threads: Vec<Pass>,
    /// Threads that search segments in parallel (0: the engine's choice).
    pub search_threads: usize,
    /// Queries measured.
    pub queries: usize,
    /// Graph degree.
    pub m: usize,
    /// Build candidate list.
    pub ef_construct: usize,
    /// Search candidate list.
    pub search_ef: usize,
    /// int8 vectors in RAM, originals on disk.
    pub quantized: bool,
    /// The number type of the stored originals.
    pub originals: crate::adapters::Originals,
}

/// The rewrite of a built index into other originals (the searches are measured after it).
#[derive(Clone, Debug, Serialize)]
pub struct RewriteReport {
    /// The number type the rewritten index stores.
    pub originals: crate::adapters::Originals,
    /// Seconds from the open index to the rewritten one, open.
    pub rewrite_s: f64,
    /// The most resident memory seen while rewriting (sampled every 20 ms), MB.
    pub peak_rss_mb: f64,
    /// The most anonymous memory seen while rewriting, MB.
    pub peak_anonymous_mb: f64,
    /// The most resident pages of mapped files seen while rewriting, MB.
    pub peak_file_mb: f64,
}

/// Latency and recall of the same queries in another pass: at another search candidate list or
/// with another number of search threads.
#[derive(Clone, Debug, Serialize)]
pub struct Pass {
    /// The candidate list.
    pub ef: usize,
    /// Threads that search segments in parallel (0: the engine's choice).
    pub search_threads: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Mean fraction of the exact top 10 found.
    pub recall_at_10: f64,
}

/// Seeded generator of embedding-shaped vectors.
struct Generator {
    rng: StdRng,
    dimension: usize,
    centroids: Vec<Vec<f32>>,
    noise: f32,
}

impl Generator {
    fn new(options: &AnnOptions) -> Self {
        let clusters = if options.uniform {
            0
        } else {
            options.vectors.div_ceil(options.per_cluster.max(1))
        };
        Self::seeded(options.seed, clusters, options.dimension)
    }

    /// Members of `clusters` clusters (uniform unit vectors if 0).
    fn seeded(seed: u64, clusters: usize, dimension: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centroids = (0..clusters)
            .map(|_| unit_gaussian(&mut rng, dimension, 1.0))
            .collect();
        // A member is centroid + noise with |noise|² ≈ 1.04: cosine ≈ 1 / √2.04 ≈ 0.7.
        let noise = (1.04 / dimension as f32).sqrt();
        Self {
            rng,
            dimension,
            centroids,
            noise,
        }
    }

    fn next(&mut self) -> Vec<f32> {
        if self.centroids.is_empty() {
            return unit_gaussian(&mut self.rng, self.dimension, 1.0);
        }
        let centroid = &self.centroids[self.rng.random_range(0..self.centroids.len())];
        let mut vector: Vec<f32> = centroid
            .iter()
            .map(|c| {
                let n: f32 = StandardNormal.sample(&mut self.rng);
                c + n * self.noise
            })
            .collect();
        normalise(&mut vector);
        vector
    }
}

fn unit_gaussian(rng: &mut StdRng, dimension: usize, scale: f32) -> Vec<f32> {
    let mut vector: Vec<f32> = (0..dimension)
        .map(|_| {
            let n: f32 = StandardNormal.sample(rng);
            n * scale
        })
        .collect();
    normalise(&mut vector);
    vector
}

fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    vector.iter_mut().for_each(|v| *v /= norm);
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The most anonymous and file-backed memory the process holds while it runs, sampled on a
/// thread (a peak between two samples 20 ms apart can be missed; VmHWM catches the total).
struct MemoryWatch {
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<ProcessMemory>,
}

impl MemoryWatch {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut highest = ProcessMemory::default();
            loop {
                if let Some(now) = ProcessMemory::now() {
                    highest.anonymous = highest.anonymous.max(now.anonymous);
                    highest.file = highest.file.max(now.file);
                    highest.resident = highest.resident.max(now.resident);
                    highest.peak = now.peak;
                }
                if stopped.load(Ordering::Relaxed) {
                    return highest;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Self { stop, sampler }
    }

    /// The highest of each figure.
    fn finish(self) -> ProcessMemory {
        self.stop.store(true, Ordering::Relaxed);
        self.sampler.join().unwrap_or_default()
    }
}

/// Exact top-10 ids of every query, over the stream of generated batches.
struct ExactTopK {
    queries: Tensor,
    heaps: Vec<BinaryHeap<std::cmp::Reverse<(ordered::Score, u64)>>>,
}

mod ordered {
    /// A score with a total order (for the heaps).
    #[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
    pub struct Score(pub f32);
    impl Eq for Score {}
    #[allow(clippy::derive_ord_xor_partial_ord)]
    impl Ord for Score {
        fn cmp(&self, other: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&other.0)
        }
    }
}

impl ExactTopK {
    fn new(queries: &[Vec<f32>], dimension: usize) -> candle_core::Result<Self> {
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        Ok(Self {
            queries: Tensor::from_vec(flat, (queries.len(), dimension), &Device::Cpu)?,
            heaps: vec![BinaryHeap::new(); queries.len()],
        })
    }

    fn add(
        &mut self,
        first_id: u64,
        batch: &[Vec<f32>],
        dimension: usize,
    ) -> candle_core::Result<()> {
        let flat: Vec<f32> = batch.iter().flatten().copied().collect();
        let vectors = Tensor::from_vec(flat, (batch.len(), dimension), &Device::Cpu)?;
        let scores: Vec<Vec<f32>> = self.queries.matmul(&vectors.t()?)?.to_vec2()?;
        for (heap, row) in self.heaps.iter_mut().zip(scores) {
            for (offset, score) in row.into_iter().enumerate() {
                let entry = std::cmp::Reverse((ordered::Score(score), first_id + offset as u64));
                if heap.len() < RECALL_AT {
                    heap.push(entry);
                } else if heap.peek().is_some_and(|worst| entry < *worst) {
                    heap.pop();
                    heap.push(entry);
                }
            }
        }
        Ok(())
    }

    fn ids(&self, query: usize) -> Vec<u64> {
        self.heaps[query].iter().map(|e| (e.0).1).collect()
    }
}

/// Mean fraction of the exact top 10 that two encodings of the same queries share, over
/// `vectors` generated embedding-shaped vectors (clusters of 100, as `glimpse bench ann` builds
/// by default): how much a faster encoding changes what searches return.
pub fn top10_agreement(
    reference: &[Vec<f32>],
    candidate: &[Vec<f32>],
    vectors: usize,
) -> Result<f64, String> {
    let dimension = match reference.first() {
        Some(first) if reference.len() == candidate.len() => first.len(),
        _ => return Err("top-10 agreement needs the same queries, at least one".into()),
    };
    let queries: Vec<Vec<f32>> = reference.iter().chain(candidate).cloned().collect();
    let mut exact = ExactTopK::new(&queries, dimension).map_err(error)?;
    let mut generator = Generator::seeded(0, vectors.div_ceil(100), dimension);
    let mut generated = 0;
    while generated < vectors {
        let size = BATCH.min(vectors - generated);
        let batch: Vec<Vec<f32>> = (0..size).map(|_| generator.next()).collect();
        exact
            .add(generated as u64, &batch, dimension)
            .map_err(error)?;
        generated += size;
    }
    let shared: usize = (0..reference.len())
        .map(|query| {
            let wanted = exact.ids(query);
            let got = exact.ids(reference.len() + query);
            got.iter().filter(|id| wanted.contains(id)).count()
        })
        .sum();
    Ok(shared as f64 / (reference.len() * RECALL_AT.min(vectors)) as f64)
}

fn error(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The id of the `n`th generated vector: spread over the id space (an odd multiplier is a
/// bijection), as the ids of photos, taken from their SHA-256, are, so that what reads in id
/// order (a scroll) reads from every segment as it does in a library.
fn photo_id(n: u64) -> PhotoId {
    PhotoId::from_u64(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn facets() -> Facets {
    Facets {
        album: None,
        camera: None,
        dated_at: 0,
    }
}

/// Builds an index of generated vectors in `directory` (through the VectorIndex port, then the
/// optimiser), returning it with the exact neighbours of `queries` and the build time.
async fn build(
    directory: &Path,
    options: &AnnOptions,
    encoder: &EncoderId,
    queries: &[Vec<f32>],
    generator: &mut Generator,
) -> Result<(LocalIndex, ExactTopK, f64), String> {
    let index =
        LocalIndex::open(directory, encoder, options.dimension, options.tuning).map_err(error)?;
    let mut exact = ExactTopK::new(queries, options.dimension).map_err(error)?;
    let started = Instant::now();
    let mut generated = 0;
    while generated < options.vectors {
        let size = BATCH.min(options.vectors - generated);
        let batch: Vec<Vec<f32>> = (0..size).map(|_| generator.next()).collect();
        exact
            .add(generated as u64, &batch, options.dimension)
            .map_err(error)?;
        let mut points = batch
            .into_iter()
            .enumerate()
            .map(|(i, vector)| {
                Ok(IndexedPhoto {
                    id: photo_id((generated + i) as u64),
                    vector: Embedding::normalized(vector).map_err(error)?,
                    facets: facets(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        while !points.is_empty() {
            let rest = points.split_off(options.upsert_batch.clamp(1, points.len()));
            index.upsert(points).await.map_err(error)?;
            points = rest;
        }
        generated += size;
    }
    index.optimize().map_err(error)?;
    Ok((index, exact, started.elapsed().as_secs_f64()))
}

/// Runs every query twice and times the second pass: (latencies in ms, mean recall@10).
async fn measure(
    index: &LocalIndex,
    queries: &[Vec<f32>],
    exact: &ExactTopK,
) -> Result<(Vec<f64>, f64), String> {
    let filter = SearchFilter::default();
    let mut latencies = Vec::with_capacity(queries.len());
    let mut recall = 0.0;
    for round in 0..2 {
        for (i, query) in queries.iter().enumerate() {
            let query = Embedding::normalized(query.clone()).map_err(error)?;
            let started = Instant::now();
            let found = index
                .nearest(&query, &filter, RECALL_AT)
                .await
                .map_err(error)?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            if round == 1 {
                latencies.push(elapsed);
                let truth = exact.ids(i);
                let hits = found
                    .iter()
                    .filter(|n| truth.iter().any(|&t| photo_id(t) == n.id))
                    .count();
                recall += hits as f64 / RECALL_AT as f64;
            }
        }
    }
    Ok((latencies, recall / queries.len().max(1) as f64))
}

/// Measures the queries again on `index`, whose candidate list is `ef` and search threads
/// `search_threads`.
async fn pass(
    index: &LocalIndex,
    queries: &[Vec<f32>],
    exact: &ExactTopK,
    ef: usize,
    search_threads: usize,
) -> Result<Pass, String> {
    let (latencies, recall_at_10) = measure(index, queries, exact).await?;
    let [p50_ms, p95_ms, _] = percentiles(latencies);
    Ok(Pass {
        ef,
        search_threads,
        p50_ms,
        p95_ms,
        recall_at_10,
    })
}

/// `glimpse bench ann`.
pub async fn ann(options: &AnnOptions) -> Result<AnnReport, String> {
    let scratch = tempfile::tempdir().map_err(error)?;
    // A folder of its own: a rewrite works beside it.
    let directory = scratch.path().join("index");
    let encoder: EncoderId = "bench:synthetic/vectors@1".parse().map_err(error)?;
    let mut generator = Generator::new(options);
    let queries: Vec<Vec<f32>> = (0..options.queries).map(|_| generator.next()).collect();
    let watch = MemoryWatch::start();
    let (index, exact, build_s) =
        build(&directory, options, &encoder, &queries, &mut generator).await?;
    let building = watch.finish();
    let (mut index, rewrite) = match options.rewrite_to {
        None => (index, None),
        Some(tuning) => {
            let watch = MemoryWatch::start();
            let started = Instant::now();
            let index =
                off_runtime(|| index.rewrite(&directory, tuning, |_, _, _| {})).map_err(error)?;
            let rewrite_s = started.elapsed().as_secs_f64();
            let peak = watch.finish();
            let report = RewriteReport {
                originals: index.originals(),
                rewrite_s,
                peak_rss_mb: mb(peak.resident),
                peak_anonymous_mb: mb(peak.anonymous),
                peak_file_mb: mb(peak.file),
            };
            (index, Some(report))
        }
    };
    let (latencies, recall_at_10) = measure(&index, &queries, &exact).await?;
    let mut other_ef = Vec::with_capacity(options.other_ef.len());
    for &ef in &options.other_ef {
        index.set_search_ef(ef);
        other_ef.push(pass(&index, &queries, &exact, ef, options.tuning.search_threads).await?);
    }
    let mut other_search_threads = Vec::with_capacity(options.other_search_threads.len());
    for &threads in &options.other_search_threads {
        let tuning = IndexTuning {
            search_threads: threads,
            ..options.tuning
        };
        drop(index);
        index = LocalIndex::open(&directory, &encoder, options.dimension, tuning).map_err(error)?;
        let ef = options.tuning.search_ef;
        other_search_threads.push(pass(&index, &queries, &exact, ef, threads).await?);
    }
    let memory = ProcessMemory::now().unwrap_or_default();
    let [p50_ms, p95_ms, p99_ms] = percentiles(latencies);
    Ok(AnnReport {
        vectors: options.vectors,
        dimension: options.dimension,
        distribution: if options.uniform {
            "uniform"
        } else {
            "clustered"
        },
        build_s,
        rss_mb: mb(memory.resident),
        anonymous_mb: mb(memory.anonymous),
        peak_rss_mb: mb(memory.peak),
        build_peak_anonymous_mb: mb(building.anonymous),
        build_peak_file_mb: mb(building.file),
        segments: index.segments().map_err(error)?,
        rewrite,
        upsert_batch: options.upsert_batch,
        build_every: options.tuning.build_every.unwrap_or_default(),
        max_segment_vectors: options.tuning.max_segment_vectors.unwrap_or_default(),
        p50_ms,
        p95_ms,
        p99_ms,
        recall_at_10,
        other_ef,
        other_search_threads,
        search_threads: options.tuning.search_threads,
        queries: queries.len(),
        m: options.tuning.m,
        ef_construct: options.tuning.ef_construct,
        search_ef: options.tuning.search_ef,
        quantized: options.tuning.quantized,
        originals: options.tuning.originals,
    })
}

/// The figures of one search-flow run.
#[derive(Clone, Debug, Serialize)]
pub struct SearchReport {
    /// Photos in the index and catalog.
    pub vectors: usize,
    /// Searches measured.
    pub searches: usize,
    /// Server-side latency of a whole search (parse → log), ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Median of each stage, ms.
    pub stage_p50_ms: std::collections::BTreeMap<&'static str, f64>,
    /// Seconds to build the index and catalog.
    pub build_s: f64,
    /// Resident memory after the searches, MB.
    pub rss_mb: f64,
    /// Anonymous memory (heap) after the searches, MB.
    pub anonymous_mb: f64,
    /// The most resident memory at once, build included, MB.
    pub peak_rss_mb: f64,
}

/// Queries of the kind people type, with the language's features.
pub const QUERIES: [&str; 12] = [
    "kids on a red sled",
    "beach at dusk -people",
    "whiteboard from the march offsite",
    "2:\"golden retriever\" on grass",
    "receipt from the hardware store",
    "sunset over water -people -boats",
    "birthday cake with candles",
    "mountain lake reflection",
    "sem: a cat sleeping on a laptop",
    "snowy street at night -cars",
    "family dinner, 3:\"grandma\"",
    "city skyline from the plane window",
];

/// What `glimpse bench search` runs.
#[derive(Clone, Copy, Debug)]
pub struct SearchOptions {
    /// Searches measured.
    pub searches: usize,
    /// Results per search.
    pub top_k: usize,
    /// Score with a rank-8 query adapter.
    pub adapter: bool,
    /// Searches run before the measured ones.
    pub warm_up: usize,
    /// Every search's text new (its query with the search's number appended) instead of the
    /// queries cycled.
    pub distinct: bool,
}

/// `glimpse bench search`: the whole search flow (parse, embed with the ViT-B/32-shaped text
/// tower, retrieve, rerank pass-through, load photos, log) over an index of `options.vectors`.
pub async fn search(
    options: &AnnOptions,
    encoder: Arc<dyn ImageTextEncoder>,
    flow: &SearchOptions,
) -> Result<SearchReport, String> {
    if options.rewrite_to.is_some() {
        return Err(
            "bench search does not convert an index; bench ann --convert measures it".into(),
        );
    }
    let searches = flow.searches;
    let directory = tempfile::tempdir().map_err(error)?;
    let local = LocalEncoder::new(Arc::clone(&encoder));
    let id = encoder.id().clone();
    let options = AnnOptions {
        dimension: encoder.dimension(),
        queries: 1,
        ..options.clone()
    };
    let mut generator = Generator::new(&options);
    let queries = vec![generator.next()];
    let started = Instant::now();
    let (index, _, _) = build(
        &directory.path().join("index"),
        &options,
        &id,
        &queries,
        &mut generator,
    )
    .await?;
    let catalog = SqliteCatalog::open(&directory.path().join("catalog.sqlite3")).map_err(error)?;
    let photos: Vec<Photo> = (0..options.vectors as u64)
        .map(|n| {
            let facts = ImageFacts {
                sha256: format!("{n:064x}"),
                id: photo_id(n),
                format: ImageFormat::Jpeg,
                width: 4000,
                height: 3000,
                taken_at: Some(1_600_000_000 + n as i64),
                camera: Some("Bench Camera".to_owned()),
                location: None,
            };
            let details = NewPhotoDetails {
                origin: Origin::Upload(Origin::upload_key(photo_id(n))),
                bytes: 3_000_000,
                album: Some(format!("Album {}", n % 50)),
                modified_at: None,
            };
            Photo::new(facts, details, 1_700_000_000)
        })
        .collect();
    catalog.import(&photos).map_err(error)?;
    drop(photos);
    let build_s = started.elapsed().as_secs_f64();
    // Its weights do not change its cost: a fresh one (U = 0) computes all that a trained one does.
    let adapter = flow.adapter.then(|| AdapterVersion {
        version: 1,
        encoder: id.clone(),
        adapter: QueryAdapter::new(options.dimension, 8, 1.0, 1),
        evaluation: Evaluation::default(),
        trained_at: 0,
    });
    let ports = Ports {
        catalog: &catalog,
        index: &index,
        text: &local,
        reranker: &RetrievalOrder,
        adapter: adapter.as_ref(),
        exploration: ExplorationSettings::OFF,
    };
    // As `glimpse serve` once nothing is left to index: searches need only the text tower.
    encoder.release_image_tower();
    let mut totals = Vec::with_capacity(searches);
    let mut stages: Vec<StageTimings> = Vec::with_capacity(searches);
    for round in 0..flow.warm_up + searches {
        let query = QUERIES[round % QUERIES.len()];
        let text = if flow.distinct {
            format!("{query} {round}")
        } else {
            query.to_owned()
        };
        let request = SearchRequest {
            top_k: flow.top_k.clamp(1, MAX_TOP_K),
            ..SearchRequest::new(text)
        };
        let response = flows::search(ports, &request).await.map_err(error)?;
        if round >= flow.warm_up {
            totals.push(response.timings.total_ms);
            stages.push(response.timings);
        }
    }
    let memory = ProcessMemory::now().unwrap_or_default();
    let [p50_ms, p95_ms, p99_ms] = percentiles(totals);
    let stage_p50_ms = StageTimings::STAGES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                *name,
                percentiles(stages.iter().map(|t| t.values()[i]).collect())[0],
            )
        })
        .collect();
    Ok(SearchReport {
        vectors: options.vectors,
        searches,
        p50_ms,
        p95_ms,
        p99_ms,
        stage_p50_ms,
        build_s,
        rss_mb: mb(memory.resident),
        anonymous_mb: mb(memory.anonymous),
        peak_rss_mb: mb(memory.peak),
    })
}
