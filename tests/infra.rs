//! The deployment's consistency with the code, offline: the settings the `gpu_worker` Terraform
//! module writes on each worker load with `glimpse worker`'s own settings loader, and the routes
//! of `spin.toml` are the public API's paths. (`tests/infra/check` checks the modules against
//! `spin.toml`'s variables.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use glimpse_http::Endpoint;
use glimpse_worker::worker::settings::WorkerSettings;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template(name: &str) -> String {
    let path = repository()
        .join("infra/terraform/modules/gpu_worker/templates")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the module passes for each placeholder, as a user's values would be.
fn sample(placeholder: &str) -> &'static str {
    match placeholder {
        "model" => "openai/clip-vit-base-patch32",
        "port" => "8090",
        "batch" => "32",
        "decode_memory_mb" => "4096",
        "idle_poll_ms" => "1000",
        "lease_seconds" => "300",
        "database_connections" => "8",
        "s3_bucket" => "glimpse-originals-123456789012",
        "s3_region" => "us-east-1",
        "s3_access_key_id" => "AKIAIOSFODNN7EXAMPLE",
        "qdrant_url" => "https://abc.us-east-1-0.aws.cloud.qdrant.io:6334",
        "qdrant_collection_prefix" => "glimpse",
        "worker_token" => "q8Vx3mZt0LkP9wRb2NcYh7FjD4sGa1Ue",
        "database_url" => {
            "postgres://glimpse:p-4ss_w0rd@glimpse.abc.us-east-1.rds.amazonaws.com:5432/glimpse"
        }
        "s3_secret_access_key" => "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "qdrant_api_key" => "qdrant-database-api-key",
        "reranker_model" => "Qwen/Qwen2-VL-2B-Instruct",
        "reranker_max_candidates" => "10",
        "reranker_image_tokens" => "144",
        "reranker_learn_every_clicks" => "100",
        other => panic!(
            "the gpu_worker templates use ${{{other}}}: give it a sample value in tests/infra.rs"
        ),
    }
}

/// Renders a template as Terraform's `templatefile` does for plain `${name}` interpolations (the
/// worker's templates use nothing else).
fn render(name: &str) -> String {
    let text = template(name);
    assert!(!text.contains("%{"), "{name}: directives are not expected");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed interpolation") + start;
        out.push_str(sample(&rest[start + 2..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `KEY=value` lines of an environment file, as systemd's `EnvironmentFile=` reads them.
fn environment(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn load(settings: &str, env: &str) -> WorkerSettings {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, settings).unwrap();
    let variables = environment(env);
    for (key, _) in &variables {
        assert!(key.starts_with("GLIMPSE__"), "{key} is not a setting");
    }
    WorkerSettings::load(Some(&path), variables).unwrap_or_else(|e| {
        panic!("the settings the gpu_worker module writes do not load: {e}\n{settings}")
    })
}

#[test]
fn a_worker_that_consumes_jobs_loads_the_settings_the_module_writes() {
    let settings = load(
        &(render("worker.toml.tftpl") + &render("backends.toml.tftpl")),
        &(render("worker.env.tftpl") + &render("backends.env.tftpl")),
    );
    assert_eq!(settings.model, sample("model"));
    assert_eq!(settings.worker.listen.to_string(), "0.0.0.0:8090");
    assert_eq!(settings.token(), sample("worker_token"));
    let backends = settings
        .backends()
        .expect("the job consumer is configured: database, bucket and index");
    assert_eq!(backends.database.url.expose(), sample("database_url"));
    assert_eq!(backends.s3.bucket, sample("s3_bucket"));
    assert_eq!(
        backends.s3.secret_access_key,
        sample("s3_secret_access_key")
    );
    assert_eq!(backends.s3.endpoint, None, "AWS's own endpoint");
    assert_eq!(backends.qdrant.url, sample("qdrant_url"));
    assert_eq!(
        backends.qdrant.api_key.as_deref(),
        Some(sample("qdrant_api_key"))
    );
}

#[test]
fn a_worker_with_the_reranker_loads_the_settings_the_module_writes() {
    let settings = load(
        &(render("worker.toml.tftpl")
            + &render("backends.toml.tftpl")
            + &render("reranker.toml.tftpl")
            + &render("reranker_learning.toml.tftpl")),
        &(render("worker.env.tftpl") + &render("backends.env.tftpl")),
    );
    let reranker = settings.reranker.as_ref().expect("the [reranker] section");
    assert_eq!(reranker.model, sample("reranker_model"));
    assert_eq!(reranker.vlm_settings().max_candidates, 10);
    assert_eq!(reranker.vlm_settings().image_tokens, 144);
    let learning = reranker.learning.as_ref().expect("[reranker.learning]");
    assert_eq!(learning.every_clicks, 100);
    assert!(
        settings.storage().is_some(),
        "it reads the photos from the bucket"
    );
}

#[test]
fn a_worker_for_query_text_loads_the_settings_the_module_writes_without_backends() {
    let settings = load(&render("worker.toml.tftpl"), &render("worker.env.tftpl"));
    assert_eq!(settings.token(), sample("worker_token"));
    assert!(
        settings.backends().is_none(),
        "no job consumer without consume_jobs"
    );
}

/// The paths of spin.toml's routes, `:name` segments filled in.
fn spin_routes() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repository().join("spin.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    manifest["trigger"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|trigger| {
            let route = trigger["route"].as_str().unwrap();
            let path = route
                .split('/')
                .map(|segment| match segment.strip_prefix(':') {
                    Some(_) => "p1",
                    None => segment,
                })
                .collect::<Vec<_>>()
                .join("/");
            (path, trigger["component"].as_str().unwrap().to_owned())
        })
        .collect()
}

#[test]
fn the_routes_of_spin_toml_are_the_public_apis_paths_and_the_web_page() {
    let routes = spin_routes();
    let mut routed = BTreeSet::new();
    let mut components: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut page = BTreeMap::new();
    for (path, component) in &routes {
        if glimpse_http::page::is_page_path(path) {
            page.insert(path.clone(), component.clone());
            continue;
        }
        let endpoint = Endpoint::of(path).unwrap_or_else(|| {
            panic!("spin.toml routes {path}, which is neither an API path nor the web page's")
        });
        routed.insert(endpoint.template().replace("p1", "{id}"));
        components
            .entry(endpoint.template().replace("p1", "{id}"))
            .or_default()
            .insert(component.clone());
    }
    for (template, serving) in &components {
        assert_eq!(serving.len(), 1, "{template} is routed to {serving:?}");
    }
    let unrouted: Vec<String> = Endpoint::ALL
        .iter()
        .map(Endpoint::template)
        .filter(|template| !routed.contains(template))
        .collect();
    assert_eq!(
        unrouted,
        Vec::<String>::new(),
        "every API path is routed at the edge"
    );
    // The page: `/` and everything under /assets/, by one component that serves no API path.
    let page_paths: Vec<&str> = page.keys().map(String::as_str).collect();
    assert_eq!(page_paths, ["/", "/assets/..."]);
    let page_components: BTreeSet<&String> = page.values().collect();
    assert_eq!(page_components.len(), 1, "{page:?}");
    assert!(
        components
            .values()
            .all(|serving| page_components.is_disjoint(&serving.iter().collect())),
        "the page's component serves no API path"
    );
}
