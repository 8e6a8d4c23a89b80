//! `singlepoint serve`: flags → validated server config → models on engines → HTTP until
//! SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use singlepoint_audio::AudioLimits;
use singlepoint_backend::EngineOptions;
use singlepoint_model::{DecodeLimits, Model};
use singlepoint_runtime::tune::RunConfig;
use singlepoint_runtime::{load_engine, BackendChoice, LengthGrouping};
use singlepoint_server::{BatchConfig, Loader, ModelControl, Repository, ServeConfig, Server};
use singlepoint_speech::whisper::{BatchOptions, Threads};
use singlepoint_speech::SpeechOptions;

use crate::cache_args::{parse_delay, parse_duration, parse_size, CacheArgs, CostArgs};

#[derive(Args)]
pub struct ServeArgs {
    /// A model folder or model.json to serve; repeat for several (default: the bundled
    /// EfficientNet-Lite0 unless --model-repository is given)
    #[arg(long)]
    model: Vec<PathBuf>,

    /// A folder of model folders, each with its model.json: every one is served
    #[arg(long, value_name = "DIR")]
    model_repository: Option<PathBuf>,

    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1", env = "SINGLEPOINT_HOST")]
    host: String,

    /// Port to listen on (0: any free port; the address is logged)
    #[arg(long, default_value_t = 8000, env = "SINGLEPOINT_PORT")]
    port: u16,

    /// Engine: `ort`, `tract`, or `auto` (ONNX Runtime, fetched on first use, else tract)
    #[arg(long, default_value = "auto", env = "SINGLEPOINT_BACKEND")]
    backend: BackendChoice,

    /// Engine instances per model running batches in parallel (default: one per core)
    #[arg(long)]
    instances: Option<usize>,

    /// Intra-op threads of each instance (default 1)
    #[arg(long)]
    threads_per_instance: Option<usize>,

    /// Most items in one engine run (default 8)
    #[arg(long)]
    max_batch_size: Option<usize>,

    /// A configuration written by `singlepoint tune`: its engine, instances, threads per
    /// instance and batch size (as the max batch size) apply where no flag sets them
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Texts (and tensors with pad values): run what is waiting in arrival order, padded to
    /// the longest, instead of grouping it by length within a token budget
    #[arg(long)]
    no_length_grouping: bool,

    /// How long the oldest item of a forming batch may wait for more: `0`, `2ms`, ...
    #[arg(long, default_value = "2ms", value_parser = parse_delay, value_name = "DELAY")]
    max_queue_delay: Duration,

    /// Adapt batch size (up to --max-batch-size) and queue delay to the load online, holding
    /// the p99 item latency under this target (`250ms`); off: both fixed
    #[arg(long, value_parser = parse_duration, value_name = "TIME")]
    latency_target: Option<Duration>,

    /// Batch sizes that go at once when nothing more is waiting, comma-separated (e.g. 4,8)
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    preferred_batch_sizes: Vec<usize>,

    /// Threads decoding and preprocessing images (default: one per core)
    #[arg(long)]
    decode_workers: Option<usize>,

    /// Items admitted and not yet answered, per model; beyond it requests get 429
    #[arg(long, default_value_t = 256)]
    max_queue: usize,

    /// A request not answered within this gets 504: `500ms`, `30s`, ...
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "TIME")]
    request_timeout: Duration,

    /// Largest request body; larger ones get 413
    #[arg(long, default_value = "32MiB", value_parser = parse_size, value_name = "SIZE")]
    max_body: u64,

    /// Longest audio the speech endpoints accept, in seconds (their byte limit is --max-body)
    #[arg(long, default_value_t = 3.0 * 3600.0, value_name = "SECONDS")]
    max_audio_seconds: f64,

    /// Whisper encoder threads of the speech endpoints, each with its own sessions
    #[arg(long, default_value_t = BatchOptions::default().encoders)]
    speech_encoders: usize,

    /// Intra-op threads of each Whisper encoder thread's sessions
    #[arg(long, default_value_t = Threads::default().encoder)]
    speech_encoder_threads: usize,

    /// Intra-op threads of the Whisper decoder's session
    #[arg(long, default_value_t = Threads::default().decoder)]
    speech_decoder_threads: usize,

    /// A request's headers must arrive within this; idle keep-alive connections close after it
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "TIME")]
    header_timeout: Duration,

    /// A request's body must arrive within this, or the request gets 408 (slow uploads)
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "TIME")]
    body_timeout: Duration,

    /// Open connections at most; further clients wait in the listen backlog
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,

    /// Refuse images with more pixels than this (decompression bombs)
    #[arg(long, default_value_t = DecodeLimits::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,

    /// After SIGTERM, how long requests in flight may take before the server exits anyway
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "TIME")]
    shutdown_timeout: Duration,

    #[command(flatten)]
    cache: CacheArgs,

    #[command(flatten)]
    cost: CostArgs,

    /// Never download ONNX Runtime; fall back to tract when it is not installed
    #[arg(long, env = "SINGLEPOINT_NO_FETCH")]
    no_fetch: bool,

    /// Log lines on stderr as text or as one JSON object per line (filter with RUST_LOG)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// `explicit`: clients load and unload the repository's models over HTTP
    /// (`POST /v2/repository/models/{name}/load`, `/unload`); `poll`: the server rescans the
    /// repository every --repository-poll-interval and follows it (new and changed folders
    /// are loaded, removed ones unloaded); `none`: the models loaded at start are served
    /// until exit. Needs --model-repository
    #[arg(long, value_enum, default_value_t = ModelControlArg::None)]
    model_control: ModelControlArg,

    /// How often `--model-control poll` rescans the repository
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    repository_poll_interval: std::time::Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModelControlArg {
    None,
    Explicit,
    Poll,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Every model folder under `dir` (those holding a model.json or an ONNX file), in name order.
fn repository(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the model repository `{}`", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if singlepoint_model::is_model_dir(&path) {
            found.push(path);
        }
    }
    if found.is_empty() {
        anyhow::bail!(
            "the model repository `{}` has no model folders (folders with a model.json or an .onnx file)",
            dir.display()
        );
    }
    found.sort();
    Ok(found)
}

pub fn run(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.config {
        let config = RunConfig::load(path).map_err(anyhow::Error::msg)?;
        if let Some(chosen) = config.model {
            if args.model.is_empty() && args.model_repository.is_none() {
                args.model.push(chosen);
            }
        }
        let c = config.candidate;
        if args.backend == BackendChoice::Auto {
            args.backend = BackendChoice::Only(c.backend);
        }
        args.instances.get_or_insert(c.instances);
        args.threads_per_instance
            .get_or_insert(c.threads_per_instance);
        args.max_batch_size.get_or_insert(c.batch_size);
    }
    if args.model_control != ModelControlArg::None && args.model_repository.is_none() {
        anyhow::bail!("`--model-control explicit` and `poll` need `--model-repository DIR`: the models they load come from there");
    }
    if args.repository_poll_interval.is_zero() {
        anyhow::bail!("`--repository-poll-interval` must be more than 0");
    }
    let threads_per_instance = args.threads_per_instance.unwrap_or(1);
    let started = crate::started();
    init_tracing(args.log_format);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut paths = args.model.clone();
    if let Some(dir) = &args.model_repository {
        paths.extend(repository(dir)?);
    }
    let models: Vec<Arc<Model>> = if paths.is_empty() {
        vec![Arc::new(Model::bundled())]
    } else {
        paths
            .iter()
            .map(|p| {
                Model::load(p)
                    .map(Arc::new)
                    .with_context(|| format!("cannot load the model `{}`", p.display()))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let (prices, weights) = args.cost.resolve()?;
    if threads_per_instance == 0 {
        anyhow::bail!("`--threads-per-instance` must be at least 1");
    }
    let config = ServeConfig {
        batch: BatchConfig {
            instances: args.instances.unwrap_or(cores),
            max_batch_size: args.max_batch_size.unwrap_or(8),
            max_queue_delay: args.max_queue_delay,
            preferred_batch_sizes: args.preferred_batch_sizes.clone(),
            decode_workers: args.decode_workers.unwrap_or(cores),
            max_queue: args.max_queue,
            limits: DecodeLimits {
                max_pixels: args.max_pixels,
            },
            latency_target: args.latency_target,
            record_batches: false,
            length_grouping: (!args.no_length_grouping).then_some(LengthGrouping::DEFAULT),
        },
        request_timeout: args.request_timeout,
        max_body_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        max_connections: args.max_connections,
        shutdown_timeout: args.shutdown_timeout,
        prices,
        weights,
        speech: SpeechOptions {
            limits: AudioLimits {
                max_bytes: usize::try_from(args.max_body).unwrap_or(usize::MAX),
                max_seconds: args.max_audio_seconds,
            },
            threads: Threads {
                encoder: args.speech_encoder_threads,
                decoder: args.speech_decoder_threads,
            },
            batch: BatchOptions {
                encoders: args.speech_encoders,
                ..BatchOptions::default()
            },
            ..SpeechOptions::default()
        },
    };
    config.validate(&models)?;
    config
        .speech
        .validate()
        .map_err(|e| anyhow::anyhow!("the speech settings: {e}"))?;
    let options = EngineOptions {
        threads_per_session: threads_per_instance,
        ..EngineOptions::default()
    };
    let mut loaded = Vec::new();
    for model in &models {
        let engine = load_engine(model, args.backend, options, !args.no_fetch)
            .with_context(|| format!("cannot start the model `{}`", model.manifest.name))?;
        for warning in &engine.warnings {
            tracing::warn!("{warning}");
        }
        loaded.push((model.clone(), engine.engine));
    }
    let cache = args.cache.open()?.map(Arc::new);
    if let Some(cache) = &cache {
        for warning in cache.take_warnings() {
            tracing::warn!("{warning}");
        }
    }
    let mut server = Server::start(loaded, cache.clone(), config, started.elapsed())?;
    if let Some(dir) = &args.model_repository {
        let (backend, fetch) = (args.backend, !args.no_fetch);
        let loader: Loader = Arc::new(move |path: &Path| {
            let model = Model::load(path).map_err(|e| e.to_string())?;
            let engine = load_engine(&model, backend, options, fetch).map_err(|e| e.to_string())?;
            for warning in &engine.warnings {
                tracing::warn!("{warning}");
            }
            Ok((Arc::new(model), engine.engine))
        });
        server = server.with_repository(Repository {
            dir: dir.clone(),
            control: match args.model_control {
                ModelControlArg::None => ModelControl::None,
                ModelControlArg::Explicit => ModelControl::Explicit,
                ModelControlArg::Poll => ModelControl::Poll(args.repository_poll_interval),
            },
            loader,
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let addr = format!("{}:{}", args.host, args.port);
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on `{addr}`"))?;
        let local: SocketAddr = listener.local_addr()?;
        for (name, service) in &server.state().models.snapshot() {
            let c = service.config();
            tracing::info!(
                model = %name,
                engine = service.engine_kind().as_str(),
                digest = %service.model().digest.short(),
                instances = c.instances,
                max_batch_size = c.max_batch_size,
                "model ready"
            );
        }
        tracing::info!(
            "listening on http://{local} (ready {:.0} ms after start)",
            started.elapsed().as_secs_f64() * 1e3
        );
        // Cache warnings (a disk tier switched off, Redis going down or coming back) are
        // logged as they happen, one line per change.
        if let Some(cache) = server.state().cache.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    for warning in cache.take_warnings() {
                        tracing::warn!("{warning}");
                    }
                }
            });
        }
        server.serve(listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    if let Some(cache) = cache {
        for warning in cache.take_warnings() {
            tracing::warn!("{warning}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
