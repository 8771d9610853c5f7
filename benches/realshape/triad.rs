//! A STREAM-style triad (`a[i] = b[i] + s * c[i]`, f64) over arrays far larger than the caches,
//! on every CPU of the machine: the memory bandwidth that bounds a decode step
//! (`benches/realshape/run`, issue 18).
//!
//! ```text
//! rustc -O -C target-cpu=native benches/realshape/triad.rs -o target/release/triad
//! target/release/triad [--mib-per-array 256] [--repeats 10]
//! ```
//! (std only, so `benches/realshape/run` compiles it with rustc alone.)
//! Prints one JSON line: `{"triad_gb_s", "threads", "bytes_per_pass", "best_s"}`, where bytes are
//! counted as STREAM counts them (24 bytes per element: two reads and one write) and GB are 10^9
//! bytes. The best of the repeats is reported, as STREAM does.

use std::time::Instant;

fn main() {
    let mut mib: usize = 256;
    let mut repeats: usize = 10;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        match (flag.as_str(), value) {
            ("--mib-per-array", Some(v)) if v > 0 => mib = v,
            ("--repeats", Some(v)) if v > 0 => repeats = v,
            _ => {
                eprintln!("triad: usage: triad [--mib-per-array N] [--repeats N]");
                std::process::exit(2);
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = mib * 1024 * 1024 / 8;
    let chunk = n.div_ceil(threads);
    let mut a = vec![0.0f64; n];
    let b: Vec<f64> = (0..n).map(|i| (i % 1024) as f64).collect();
    let c: Vec<f64> = (0..n).map(|i| (i % 512) as f64 * 0.5).collect();
    let scalar = 3.0f64;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let start = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                s.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + scalar * z;
                    }
                });
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    // Keep the result observable so the loop is not optimised away.
    let check: f64 = a.iter().step_by(4099).sum();
    let bytes = 24 * n;
    println!(
        "{{\"triad_gb_s\": {}, \"threads\": {threads}, \"bytes_per_pass\": {bytes}, \"best_s\": {best}, \"check\": {check}}}",
        bytes as f64 / best / 1e9
    );
}
