//! `singlepoint serve`: models behind HTTP, speaking the Open Inference Protocol v2 (the KServe
//! v2 REST protocol that Triton and `tritonclient` speak, with the binary tensor extension) and
//! a plain classify endpoint for a photo and curl.
//!
//! - The serving path itself (key → cache → coalescing → admission → preprocessing pool →
//!   dynamic batcher → engine instances → cache → every waiter) is the single point in
//!   `singlepoint_runtime::service`, the same one `classify` drives; this crate holds HTTP only:
//!   routes, protocol encoding, limits.
//! - `singlepoint-protocol` (its own crate, fuzzed): the protocol's request parsing (JSON and
//!   binary framing), responses, and multipart classify forms.
//! - [`http`]: routes, handlers, errors as `{"error": ...}`, the metrics exposition.
//! - [`metrics`]: Prometheus counters and histograms.

pub mod feedback;
pub mod http;
pub mod metrics;
pub mod speech;
pub mod streams;
pub mod text;

pub use singlepoint_runtime::{adaptive, service};

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use singlepoint_backend::Engine;
use singlepoint_cache::ResultCache;
use singlepoint_model::Model;
use singlepoint_runtime::cost::{Prices, RssSampler, Weights};

pub use service::{BatchConfig, ModelService};

/// Starts a model's single point with the server's batching, task and cache (at start and
/// on every load).
pub fn start_service(
    config: &ServeConfig,
    cache: Option<Arc<ResultCache>>,
    model: Arc<Model>,
    engine: Arc<dyn Engine>,
) -> Result<ModelService, singlepoint_backend::BackendError> {
    let task = singlepoint_runtime::task::for_model(model.clone(), config.batch.limits);
    ModelService::start(model, task, engine, cache, config.batch.clone())
}

/// Server settings, validated once by [`ServeConfig::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    pub batch: BatchConfig,
    /// A request not answered by then gets 504; its queued items are dropped unrun.
    pub request_timeout: Duration,
    /// Larger bodies get 413 before they are read in full.
    pub max_body_bytes: usize,
    /// A request's headers must arrive within this (slow-loris); an idle keep-alive connection
    /// is closed after it.
    pub header_timeout: Duration,
    /// A request's body must arrive within this, or it gets 408.
    pub body_timeout: Duration,
    /// Connections open at once; the accept loop waits for a free slot beyond it.
    pub max_connections: usize,
    /// After SIGTERM, how long requests in flight may take before the server exits anyway.
    pub shutdown_timeout: Duration,
    pub prices: Prices,
    pub weights: Weights,
    /// The speech endpoints' models: threads, batching, audio limits, VAD settings.
    pub speech: singlepoint_speech::SpeechOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("`--{field}` {reason}")]
    Config { field: &'static str, reason: String },
    #[error("two models are named `{0}`; model names must be unique")]
    DuplicateModel(String),
    #[error("cannot start the model `{model}`: {source}")]
    Start {
        model: String,
        source: singlepoint_backend::BackendError,
    },
}

impl ServeConfig {
    pub fn validate(&self, models: &[Arc<Model>]) -> Result<(), ServeError> {
        let b = &self.batch;
        let bad = |field, reason: &str| {
            Err(ServeError::Config {
                field,
                reason: reason.to_string(),
            })
        };
        if b.instances == 0 {
            return bad("instances", "must be at least 1");
        }
        if b.max_batch_size == 0 {
            return bad("max-batch-size", "must be at least 1");
        }
        if let Some(&p) = b
            .preferred_batch_sizes
            .iter()
            .find(|&&p| p == 0 || p > b.max_batch_size)
        {
            return Err(ServeError::Config {
                field: "preferred-batch-sizes",
                reason: format!(
                    "{p} is not between 1 and --max-batch-size {}",
                    b.max_batch_size
                ),
            });
        }
        if b.decode_workers == 0 {
            return bad("decode-workers", "must be at least 1");
        }
        if b.max_queue == 0 {
            return bad("max-queue", "must be at least 1");
        }
        if b.limits.max_pixels == 0 {
            return bad("max-pixels", "must be at least 1");
        }
        if b.latency_target.is_some_and(|t| t.is_zero()) {
            return bad("latency-target", "must be positive");
        }
        if self.request_timeout.is_zero() {
            return bad("request-timeout", "must be positive");
        }
        if self.max_body_bytes == 0 {
            return bad("max-body", "must be at least 1 byte");
        }
        if self.header_timeout.is_zero() {
            return bad("header-timeout", "must be positive");
        }
        if self.body_timeout.is_zero() {
            return bad("body-timeout", "must be positive");
        }
        if self.max_connections == 0 {
            return bad("max-connections", "must be at least 1");
        }
        for m in models {
            if let Some(fixed) = m.manifest.max_batch() {
                if b.max_batch_size > fixed {
                    return Err(ServeError::Config {
                        field: "max-batch-size",
                        reason: format!(
                            "{} is larger than model `{}`'s fixed batch of {fixed}",
                            b.max_batch_size, m.manifest.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The models being served, by name. Model control swaps entries while requests flow: a
/// handler takes its model's `Arc` once and keeps it to the end of the request.
#[derive(Default)]
pub struct Registry(RwLock<BTreeMap<String, Arc<ModelService>>>);

impl Registry {
    /// Every model served now.
    pub fn snapshot(&self) -> BTreeMap<String, Arc<ModelService>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<ModelService>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Serves `service` under `name`; returns the one it replaces.
    pub fn insert(&self, name: String, service: Arc<ModelService>) -> Option<Arc<ModelService>> {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, service)
    }

    pub fn remove(&self, name: &str) -> Option<Arc<ModelService>> {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }
}

/// Whether clients may load and unload models (the repository extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelControl {
    /// The models loaded at start are served until exit.
    None,
    /// `POST /v2/repository/models/{name}/load` and `/unload`.
    Explicit,
    /// The server rescans the repository at this interval: a new or changed model folder is
    /// loaded (and replaces the version served once its requests finish), a removed one is
    /// unloaded.
    Poll(Duration),
}

/// Loads the repository's folder `name` and starts its single point (blocking: the model is
/// read and compiled). Nothing served changes; the caller swaps it in.
pub fn start_from_repository(state: &AppState, name: &str) -> Result<Arc<ModelService>, String> {
    let repository = state
        .repository
        .get()
        .ok_or_else(|| "this server has no model repository".to_string())?;
    let dir = repository.dir.join(name);
    if !singlepoint_model::is_model_dir(&dir) {
        return Err(format!(
            "the repository has no model folder `{}` with a model.json or an .onnx file",
            dir.display()
        ));
    }
    let (model, engine) = (repository.loader)(&dir)?;
    if model.manifest.name != name {
        return Err(format!(
            "`{}` holds the model `{}`; a repository folder is named for its model",
            dir.display(),
            model.manifest.name
        ));
    }
    state
        .config
        .validate(std::slice::from_ref(&model))
        .map_err(|e| e.to_string())?;
    start_service(&state.config, state.cache.clone(), model, engine)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Shuts a replaced or unloaded model down once no request holds it (or after `grace`).
pub(crate) fn retire(old: Arc<ModelService>, grace: Duration) {
    tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + grace;
        while Arc::strong_count(&old) > 1 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        old.shutdown();
        tracing::info!(
            model = %old.name(),
            version = %old.model().manifest.version,
            "model unloaded"
        );
    });
}

/// What a model folder's files are now: names, sizes and modification times. A change means
/// the folder may hold another model (its digest decides).
fn fingerprint(dir: &std::path::Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    meta.len(),
                    meta.modified().ok(),
                )
            })
        })
        .collect();
    files.sort();
    files
}

type Fingerprints = HashMap<String, Vec<(String, u64, Option<std::time::SystemTime>)>>;

/// The model folders in the repository now, with their fingerprints.
fn scan(dir: &std::path::Path) -> Fingerprints {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let name = path.file_name()?.to_str()?.to_string();
            singlepoint_model::is_model_dir(&path).then(|| (name, fingerprint(&path)))
        })
        .collect()
}

/// `--model-control poll`: every `interval`, loads the folders that appeared or changed (a
/// new digest replaces the version served; the same digest is left alone), unloads those
/// that disappeared. A folder that fails to load is logged and retried when it changes again;
/// the version served meanwhile keeps serving.
async fn poll_repository(state: Arc<AppState>, interval: Duration) {
    let Some(dir) = state.repository.get().map(|r| r.dir.clone()) else {
        return;
    };
    let first = dir.clone();
    let mut seen = tokio::task::spawn_blocking(move || scan(&first))
        .await
        .unwrap_or_default();
    loop {
        tokio::time::sleep(interval).await;
        if state.draining.load(Ordering::Relaxed) {
            return;
        }
        let d = dir.clone();
        let now = match tokio::task::spawn_blocking(move || scan(&d)).await {
            Ok(now) => now,
            Err(_) => continue,
        };
        for name in seen.keys() {
            if !now.contains_key(name) {
                if let Some(old) = state.models.remove(name) {
                    tracing::info!(model = %name, "model folder removed from the repository");
                    retire(old, state.config.shutdown_timeout);
                }
            }
        }
        for (name, print) in &now {
            if seen.get(name) == Some(print) {
                continue;
            }
            let (s, n) = (state.clone(), name.clone());
            let started = tokio::task::spawn_blocking(move || start_from_repository(&s, &n)).await;
            match started {
                Ok(Ok(service)) => {
                    let same = state
                        .models
                        .get(name)
                        .is_some_and(|old| old.model().digest == service.model().digest);
                    if same {
                        let unused = service.clone();
                        tokio::task::spawn_blocking(move || unused.shutdown());
                        continue;
                    }
                    let version = service.model().manifest.version.clone();
                    let digest = service.model().digest.short();
                    if let Some(old) = state.models.insert(name.clone(), service) {
                        retire(old, state.config.shutdown_timeout);
                    }
                    tracing::info!(model = %name, %version, %digest, "model loaded (repository poll)");
                }
                Ok(Err(e)) => tracing::warn!(model = %name, "cannot load the model: {e}"),
                Err(_) => tracing::warn!(model = %name, "loading the model crashed"),
            }
        }
        seen = now;
    }
}

/// Reads a model folder and compiles it on the server's engine (the front-end decides how).
pub type Loader =
    Arc<dyn Fn(&std::path::Path) -> Result<(Arc<Model>, Arc<dyn Engine>), String> + Send + Sync>;

/// The model repository behind model control: a folder of model folders, each named for its
/// model.
pub struct Repository {
    pub dir: PathBuf,
    pub control: ModelControl,
    pub loader: Loader,
}

/// What every handler shares.
pub struct AppState {
    pub models: Registry,
    /// Set once at start when the server has a model repository.
    pub repository: OnceLock<Repository>,
    pub cache: Option<Arc<ResultCache>>,
    pub config: ServeConfig,
    pub requests: metrics::RequestMetrics,
    /// Set on SIGTERM: readiness fails; requests already received are still answered.
    pub draining: AtomicBool,
    /// The fixed costs t0 (seconds) and r0 (CPU-seconds) of starting, measured when ready.
    pub startup: (f64, f64),
    pub ready_at: std::time::Instant,
    pub rss: RssSampler,
    /// Camera streams and their reuse state (`streams`).
    pub streams: streams::Streams,
    /// The inputs of recent classifier answers, for corrections that name an answer's key.
    pub recent: feedback::Recent,
    /// The speech models behind `/v1/audio/*`, loaded on the first speech request.
    pub speech: speech::SpeechSlot,
}

/// Models loaded and their threads running, ready to accept connections.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Starts every model's sessions and threads. Fails on duplicate names or an engine that
    /// cannot make a session.
    /// `since_start` is how long the process has run before this call (for t0).
    pub fn start(
        models: Vec<(Arc<Model>, Arc<dyn Engine>)>,
        cache: Option<Arc<ResultCache>>,
        config: ServeConfig,
        since_start: Duration,
    ) -> Result<Server, ServeError> {
        let began = std::time::Instant::now();
        let list: Vec<Arc<Model>> = models.iter().map(|(m, _)| m.clone()).collect();
        config.validate(&list)?;
        let services = Registry::default();
        for (model, engine) in models {
            let name = model.manifest.name.clone();
            if services.get(&name).is_some() {
                return Err(ServeError::DuplicateModel(name));
            }
            let service =
                start_service(&config, cache.clone(), model, engine).map_err(|source| {
                    ServeError::Start {
                        model: name.clone(),
                        source,
                    }
                })?;
            services.insert(name, Arc::new(service));
        }
        Ok(Server {
            state: Arc::new(AppState {
                models: services,
                repository: OnceLock::new(),
                cache,
                config,
                requests: metrics::RequestMetrics::default(),
                draining: AtomicBool::new(false),
                startup: (
                    (since_start + began.elapsed()).as_secs_f64(),
                    singlepoint_runtime::cputime::process_cpu_time().as_secs_f64(),
                ),
                ready_at: std::time::Instant::now(),
                rss: RssSampler::start(Duration::from_secs(1)),
                streams: streams::Streams::default(),
                recent: feedback::Recent::default(),
                speech: speech::SpeechSlot::default(),
            }),
        })
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves the repository's index and, with [`ModelControl::Explicit`], loads and unloads
    /// its models on request.
    pub fn with_repository(self, repository: Repository) -> Server {
        let _ = self.state.repository.set(repository);
        self
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight (for at most
    /// the shutdown timeout), stops the model threads and returns.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        if let Some(ModelControl::Poll(interval)) = state.repository.get().map(|r| r.control) {
            tokio::spawn(poll_repository(state.clone(), interval));
        }
        let app = http::router(state.clone());
        let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
        let signal_state = state.clone();
        let signal = async move {
            shutdown.await;
            signal_state.draining.store(true, Ordering::SeqCst);
            tracing::info!("shutting down: finishing the requests in flight");
            let _ = fired_tx.send(true);
        };
        let grace = state.config.shutdown_timeout;
        let connections = serve_connections(listener, app, &state.config, signal);
        let deadline = async move {
            let _ = fired_rx.wait_for(|&fired| fired).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = connections => {}
            () = deadline => tracing::warn!(
                "requests still in flight after {grace:?}; exiting anyway"
            ),
        }
        let stopping = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for service in stopping.models.snapshot().values() {
                service.shutdown();
            }
        })
        .await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The accept loop: HTTP/1.1 connections with a deadline for each request's headers (so that
/// slow-loris clients and idle keep-alive connections are closed), at most
/// `max_connections` at once, and a graceful end: once `shutdown` completes no connection is
/// accepted, each open one finishes the request it is serving, and this returns when all are
/// closed. Accept errors (out of file descriptors) pause the loop instead of ending it.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_error = None::<std::time::Instant>;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("cannot accept a connection: {e}; retrying");
                        last_accept_error = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            // A client that shuts down its write side after the request still gets the answer.
            .half_close(true)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (reset, timed out, bad framing): nothing to answer.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(http::OPENAPI).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for route in http::ROUTES {
            assert!(paths.contains_key(*route), "openapi.json lacks {route}");
        }
        assert_eq!(
            paths.len(),
            http::ROUTES.len(),
            "openapi.json has paths no route serves"
        );
    }
}
