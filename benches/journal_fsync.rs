//! What journaling an owed write costs: `Journal::owe` (append + fsync) per call, on the
//! disk the journal would live on (the project's `target/` folder, not a tmpfs).
//! Run: `cargo bench --bench journal_fsync`. A measurement, not a test: it asserts nothing.

use std::time::{Duration, Instant};
use whatsapp_gateway::journal::Journal;

fn main() {
    let n: usize = std::env::var("JOURNAL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let journal = Journal::open(dir.path().join("owed.jsonl")).expect("open");
    let mut owe = Vec::with_capacity(n);
    let mut done = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let entry = journal
            .owe(i as i64 + 1, "session_1234567890_abc123")
            .expect("owe");
        owe.push(t.elapsed());
        let t = Instant::now();
        journal.done(entry.seq).expect("done");
        done.push(t.elapsed());
    }
    report("owe (write + fsync)", &mut owe);
    report("done (write, no fsync)", &mut done);
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let total: Duration = samples.iter().sum();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "{what}: n={} mean={:.1} us p50={:.1} us p99={:.1} us max={:.1} us",
        samples.len(),
        total.as_secs_f64() * 1e6 / samples.len() as f64,
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
    );
}
