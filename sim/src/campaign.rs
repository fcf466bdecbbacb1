//! Many seeds on many threads. Each seed is its own world (no state is shared between runs),
//! so a campaign is a loop over seeds spread across workers; a panic in one run is caught and
//! reported as that seed's failure.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sim::{run, Options, Report};

/// How one seed ended.
#[derive(Debug, Clone)]
pub struct SeedResult {
    pub seed: u64,
    pub report: Option<Report>,
    /// The panic's message, if the run panicked (a broken invariant in the node, or a bug in
    /// the simulator itself).
    pub panic: Option<String>,
}

impl SeedResult {
    /// The process exit code for this result: 0 clean, 1 safety violation, 2 liveness
    /// violation only, 3 panic.
    pub fn exit_code(&self) -> i32 {
        match &self.report {
            None => 3,
            Some(r) if r.has_safety_violation() => 1,
            Some(r) if !r.violations.is_empty() => 2,
            Some(_) => 0,
        }
    }

    /// The violation kinds found, or "panic".
    pub fn kinds(&self) -> Vec<&'static str> {
        match &self.report {
            None => vec!["panic"],
            Some(r) => {
                let mut kinds: Vec<_> = r.violations.iter().map(|v| v.kind.name()).collect();
                kinds.sort_unstable();
                kinds.dedup();
                kinds
            }
        }
    }
}

/// Runs one seed, catching a panic.
pub fn run_seed(options: Options) -> SeedResult {
    let seed = options.seed;
    match catch_unwind(AssertUnwindSafe(|| run(options))) {
        Ok(report) => SeedResult {
            seed,
            report: Some(report),
            panic: None,
        },
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            SeedResult {
                seed,
                report: None,
                panic: Some(message),
            }
        }
    }
}

/// Runs every seed of `seeds` on `jobs` threads, each with `options` but its own seed;
/// `on_done` sees each result as it comes. Results are returned in seed order.
pub fn campaign(
    seeds: Range<u64>,
    jobs: usize,
    options: &Options,
    on_done: &(dyn Fn(&SeedResult) + Sync),
) -> Vec<SeedResult> {
    campaign_until(seeds, None, jobs, options, on_done)
}

/// Like [`campaign`], but no seed starts after `deadline` (a time-boxed batch, as CI runs).
pub fn campaign_until(
    seeds: Range<u64>,
    deadline: Option<std::time::Instant>,
    jobs: usize,
    options: &Options,
    on_done: &(dyn Fn(&SeedResult) + Sync),
) -> Vec<SeedResult> {
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= seeds.end {
                    return;
                }
                let result = run_seed(Options {
                    seed,
                    ..options.clone()
                });
                on_done(&result);
                results.lock().expect("no worker panics").push(result);
            });
        }
    });
    let mut results = results.into_inner().expect("no worker panics");
    results.sort_by_key(|r| r.seed);
    results
}
