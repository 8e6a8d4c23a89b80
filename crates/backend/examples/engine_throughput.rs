//! Engine throughput on a model at given batch sizes: the Rust half of `bench/engine.py`.
//!
//! `cargo run --release -p singlepoint-backend --example engine_throughput -- \
//!     MODEL.onnx BACKEND THREADS SPIN(0|1) SECONDS BATCH...`
//!
//! Prints one JSON line per batch size: images per second over a timed loop after a warm-up,
//! on one session with THREADS intra-op threads, input of constant synthetic values.

use std::time::{Duration, Instant};

use singlepoint_backend::{load, BackendKind, EngineOptions};
use singlepoint_core::{Dim, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!(
            "usage: engine_throughput MODEL.onnx ort|tract THREADS SPIN(0|1) SECONDS BATCH..."
        );
        std::process::exit(2);
    }
    let onnx = std::fs::read(&args[0]).expect("model file");
    let kind: BackendKind = args[1].parse().expect("backend");
    let threads: usize = args[2].parse().expect("threads");
    let spin_wait = args[3] == "1";
    let seconds: f64 = args[4].parse().expect("seconds");
    let engine = load(
        kind,
        onnx.into(),
        EngineOptions {
            threads_per_session: threads,
            spin_wait,
        },
    )
    .expect("load");
    let mut session = engine.session().expect("session");
    let item: Vec<usize> = engine.input().shape[1..]
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n,
            Dim::Dynamic => panic!("dynamic non-batch axis"),
        })
        .collect();
    for batch in &args[5..] {
        let batch: usize = batch.parse().expect("batch");
        let mut shape = vec![batch];
        shape.extend(&item);
        let n: usize = shape.iter().product();
        let input = Tensor::new(
            shape,
            (0..n).map(|i| ((i % 251) as f32 - 125.0) / 128.0).collect(),
        )
        .unwrap();
        session.run(&input).expect("warm-up run");
        let started = Instant::now();
        let mut runs = 0u64;
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            session.run(&input).expect("run");
            runs += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{{\"engine\": \"{kind}\", \"batch\": {batch}, \"threads\": {threads}, \"spin\": {spin_wait}, \"runs\": {runs}, \"images_per_s\": {:.2}}}",
            (runs as f64 * batch as f64) / secs
        );
    }
}
