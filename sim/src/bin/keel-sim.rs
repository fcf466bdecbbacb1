//! `keel-sim`: run one seed, replay it with its full trace, or run a campaign of many seeds.

use std::io::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use keel_core::node::{Durability, PlantedBug};
use keel_sim::campaign::{campaign, run_seed, SeedResult};
use keel_sim::sim::format_ns;
use keel_sim::Options;

#[derive(Parser)]
#[command(name = "keel-sim", about = "Keel's deterministic simulator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What every run of a seed takes, alone or in a campaign.
#[derive(Args, Clone, Copy)]
struct WorldArgs {
    /// Simulated length of the faulty phase (a quiet phase follows).
    #[arg(long, default_value = "60s", value_parser = parse_duration_ns)]
    duration: u64,
    /// Plant a bug: skip-fsync, ack-early, no-dedup, fetch-past-hw, ack-wrong-round,
    /// cut-synced, stale-commit (with --groups), retention-early (with --lifecycle), or on
    /// clusters ack-before-commit,
    /// vote-without-sync, no-truncate, no-reannounce.
    #[arg(long, value_parser = parse_bug)]
    bug: Option<PlantedBug>,
    /// Make every producer idempotent (true) or none (false), whatever the seed says.
    #[arg(long)]
    idempotent: Option<bool>,
    /// Nodes in the simulated cluster: 1, or 3 to 9 (every partition replicated on all).
    #[arg(long, default_value_t = 1, value_parser = parse_nodes)]
    nodes: usize,
    /// The nodes' durability: fsync (acknowledge what is synced) or replicated (acknowledge
    /// what a majority holds in memory, as Kafka does by default).
    #[arg(long, default_value = "fsync", value_parser = parse_durability)]
    durability: Durability,
    /// Members of a consumer group consume (joining, syncing, committing, crashing, stalling
    /// and leaving), instead of plain consumers.
    #[arg(long)]
    groups: bool,
    /// The log's lifecycle runs on the workload's topic: retention.ms and segment.ms changed
    /// by the admin client, retention applied, DeleteRecords.
    #[arg(long)]
    lifecycle: bool,
    /// The workload's topic is compacted (with the lifecycle): keyed records, the cleaner at
    /// work, consumers that find records gone only where a newer one of the key is.
    #[arg(long)]
    compaction: bool,
    /// Transactional producers (crashing, restarting with their transactional id, zombies)
    /// and read_committed consumers run too.
    #[arg(long)]
    transactions: bool,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "replicated" => Ok(Durability::Replicated),
        _ => Err(format!("{s}: fsync or replicated")),
    }
}

impl WorldArgs {
    fn options(&self, seed: u64) -> Options {
        Options {
            seed,
            duration_ns: self.duration,
            bug: self.bug,
            idempotent: self.idempotent,
            nodes: self.nodes,
            durability: self.durability,
            groups: self.groups,
            lifecycle: self.lifecycle,
            compaction: self.compaction,
            transactions: self.transactions,
        }
    }
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n == 1 || (3..=9).contains(&n) => Ok(n),
        Ok(2) => Err("two nodes cannot lose one and keep a majority: use 1, or 3 to 9".into()),
        _ => Err(format!("{s}: a node count, 1 or 3 to 9")),
    }
}

#[derive(Args, Clone)]
struct RunArgs {
    #[arg(long)]
    seed: u64,
    #[command(flatten)]
    world: WorldArgs,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run one seed and print a summary.
    Run(RunArgs),
    /// Run one seed with its full event trace (virtual time, node ids) on stderr.
    Replay(RunArgs),
    /// Run many seeds on all cores.
    Campaign {
        /// A range of seeds, A..B (B excluded).
        #[arg(long, value_parser = parse_seeds)]
        seeds: Range<u64>,
        /// Worker threads (default: every core).
        #[arg(long)]
        jobs: Option<usize>,
        #[command(flatten)]
        world: WorldArgs,
        /// Where failing seeds go, one repro command per line.
        #[arg(long, default_value = "keel-sim-failures.txt")]
        failures: PathBuf,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Create many partitions on a static cluster of simulated nodes (no faults), wait for
    /// their leaders, then let it idle: what creating them costs, and what idling costs.
    Scale {
        #[arg(long, default_value_t = 3)]
        nodes: i32,
        /// Partitions of one topic, each replicated on every node.
        #[arg(long, default_value_t = 10_000)]
        partitions: i32,
        /// Simulated time the cluster idles once every partition has a leader.
        #[arg(long, default_value = "10s", value_parser = parse_duration_ns)]
        idle: u64,
    },
}

/// The process's resident memory, from /proc (0 where there is none).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = (status.lines())
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

fn run_scale(nodes: i32, partitions: i32, idle_ns: u64) -> anyhow::Result<ExitCode> {
    use keel_core::protocol::messages::{create_topics_request, CreateTopicsRequest};
    use keel_core::protocol::{codes, Request, Response};
    use keel_sim::cluster::Cluster;

    let resident_before = resident_bytes();
    let started = Instant::now();
    let mut cluster = Cluster::new(nodes, 1);
    // The node's cost, not the checker's (which walks every partition after every step).
    cluster.check_invariants = false;
    let request = Request::CreateTopics(CreateTopicsRequest {
        topics: vec![create_topics_request::CreatableTopic {
            name: "scale".into(),
            num_partitions: partitions,
            replication_factor: -1,
            ..Default::default()
        }],
        timeout_ms: 60_000,
        ..Default::default()
    });
    // The controller creates it (the others answer NOT_CONTROLLER until one is elected).
    let mut created = false;
    for _ in 0..100 {
        for id in cluster.ids().to_vec() {
            match cluster.call(id, 5, request.clone(), 60_000) {
                Some(Response::CreateTopics(r)) if r.topics[0].error_code == codes::NONE => {
                    created = true;
                    break;
                }
                Some(Response::CreateTopics(r))
                    if r.topics[0].error_code == codes::NOT_CONTROLLER => {}
                other => bail!("node {id} did not create the topic: {other:?}"),
            }
        }
        if created {
            break;
        }
        cluster.run(100);
    }
    if !created {
        bail!("no controller created the topic");
    }
    let created_wall = started.elapsed().as_secs_f64();
    let elected_from = cluster.now;
    let mut led = 0;
    for _ in 0..600 {
        cluster.run(100);
        led = cluster
            .nodes
            .values()
            .map(|n| n.leaderships("scale").len())
            .sum::<usize>();
        if led == partitions as usize {
            break;
        }
    }
    if led != partitions as usize {
        bail!("{led} of {partitions} partitions have a leader after a simulated minute");
    }
    let elected_sim = (cluster.now.0 - elected_from.0) as f64 / 1e9;
    let elected_wall = started.elapsed().as_secs_f64() - created_wall;
    let before = cluster.counts;
    let idle_started = Instant::now();
    cluster.run(idle_ns / 1_000_000);
    let idle_wall = idle_started.elapsed().as_secs_f64();
    let idle_sim = idle_ns as f64 / 1e9;
    let after = cluster.counts;
    let resident = resident_bytes().saturating_sub(resident_before);
    println!("{nodes} nodes, {partitions} partitions, each replicated on every node");
    println!("  created:  {created_wall:.2} s wall (the controller's election and the topic)");
    println!("  elected:  every partition led after {elected_sim:.2} s simulated ({elected_wall:.2} s wall)");
    println!(
        "  idle:     {:.3} wall s per simulated s (the cluster's CPU, one core), {:.0} peer frames/s, {:.0} peer KB/s, {:.0} node steps/s",
        idle_wall / idle_sim,
        (after.peer_frames - before.peer_frames) as f64 / idle_sim,
        (after.peer_bytes - before.peer_bytes) as f64 / idle_sim / 1e3,
        (after.node_steps - before.node_steps) as f64 / idle_sim,
    );
    println!(
        "  memory:   {:.1} MiB resident for the cluster ({:.1} KiB per partition replica)",
        resident as f64 / (1 << 20) as f64,
        resident as f64 / 1024.0 / (partitions as f64 * nodes as f64),
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    u64::try_from(duration.as_nanos()).map_err(|_| "too long".into())
}

fn parse_bug(text: &str) -> Result<PlantedBug, String> {
    PlantedBug::from_name(text).ok_or_else(|| {
        let names: Vec<_> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
        format!("unknown bug {text:?}; known: {}", names.join(", "))
    })
}

fn parse_seeds(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| "expected A..B".to_string())?;
    let a: u64 = a.parse().map_err(|e| format!("{a}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b}: {e}"))?;
    if b <= a {
        return Err("the range is empty".into());
    }
    Ok(a..b)
}

fn repro(seed: u64, world: WorldArgs) -> String {
    let mut flags = world
        .bug
        .map(|b| format!(" --bug {}", b.name()))
        .unwrap_or_default();
    if let Some(i) = world.idempotent {
        flags.push_str(&format!(" --idempotent {i}"));
    }
    if world.nodes != 1 {
        flags.push_str(&format!(" --nodes {}", world.nodes));
    }
    if world.durability == Durability::Replicated {
        flags.push_str(" --durability replicated");
    }
    if world.groups {
        flags.push_str(" --groups");
    }
    if world.lifecycle {
        flags.push_str(" --lifecycle");
    }
    if world.compaction {
        flags.push_str(" --compaction");
    }
    if world.transactions {
        flags.push_str(" --transactions");
    }
    format!(
        "keel-sim run --seed {seed} --duration {}{flags}",
        humantime::format_duration(std::time::Duration::from_nanos(world.duration))
    )
}

fn print_result(result: &SeedResult, wall_seconds: f64) {
    let Some(report) = &result.report else {
        println!(
            "seed {}: panicked: {}",
            result.seed,
            result.panic.as_deref().unwrap_or("")
        );
        return;
    };
    let sim_seconds = report.sim_ns as f64 / 1e9;
    println!("seed {}", report.seed);
    println!("  workload:        {}", report.workload);
    println!("  events:          {}", report.events);
    println!("  simulated:       {}", format_ns(report.sim_ns));
    println!(
        "  wall:            {wall_seconds:.3}s ({:.0} simulated s per wall s)",
        sim_seconds / wall_seconds.max(1e-9)
    );
    let faults: Vec<String> = report
        .faults
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  faults:          {}", faults.join(" "));
    let ops: Vec<String> = report
        .operations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  operations:      {}", ops.join(" "));
    if report.violations.is_empty() {
        println!("  violations:      none");
    } else {
        println!("  violations:");
        for v in &report.violations {
            println!(
                "    {} at {}: {}",
                v.kind.name(),
                format_ns(v.at_ns),
                v.detail
            );
        }
    }
    println!("  trace hash:      {:016x}", report.trace_hash);
}

fn run_one(args: RunArgs, replay: bool) -> anyhow::Result<ExitCode> {
    if replay {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "debug".into()),
            )
            .without_time()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let started = Instant::now();
    let result = run_seed(args.world.options(args.seed));
    let wall_seconds = started.elapsed().as_secs_f64();
    if args.json {
        let value = serde_json::json!({
            "seed": result.seed,
            "exit_code": result.exit_code(),
            "panic": result.panic,
            "report": result.report,
            "wall_seconds": wall_seconds,
        });
        println!("{value}");
    } else {
        print_result(&result, wall_seconds);
    }
    Ok(ExitCode::from(result.exit_code() as u8))
}

fn run_campaign(
    seeds: Range<u64>,
    jobs: Option<usize>,
    world: WorldArgs,
    failures: PathBuf,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let jobs = jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Panics are reported per seed; the default hook would print each one over the bar.
    std::panic::set_hook(Box::new(|_| {}));
    let bar = ProgressBar::new(seeds.end - seeds.start);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} seeds, {msg} (eta {eta})",
        )
        .map_err(|e| anyhow!("{e}"))?
        .progress_chars("=> "),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let failed = Mutex::new(0u64);
    let started = Instant::now();
    let results = campaign(seeds.clone(), jobs, &world.options(0), &|result| {
        let mut failed = failed.lock().expect("no panics under the lock");
        if result.exit_code() != 0 {
            *failed += 1;
            bar.println(format!(
                "seed {}: {}   repro: {}",
                result.seed,
                result.kinds().join(", "),
                repro(result.seed, world)
            ));
        }
        bar.set_message(format!("{} failing", *failed));
        bar.inc(1);
    });
    let _ = std::panic::take_hook();
    bar.finish();
    let wall_seconds = started.elapsed().as_secs_f64();
    let failing: Vec<&SeedResult> = results.iter().filter(|r| r.exit_code() != 0).collect();
    let sim_seconds: f64 = results
        .iter()
        .filter_map(|r| r.report.as_ref())
        .map(|r| r.sim_ns as f64 / 1e9)
        .sum();
    let events: u64 = results
        .iter()
        .filter_map(|r| r.report.as_ref())
        .map(|r| r.events)
        .sum();
    let mut by_kind = std::collections::BTreeMap::<&str, u64>::new();
    for result in &failing {
        for kind in result.kinds() {
            *by_kind.entry(kind).or_default() += 1;
        }
    }
    let mut file = std::fs::File::create(&failures)
        .with_context(|| format!("cannot write {}", failures.display()))?;
    for result in &failing {
        writeln!(
            file,
            "{}  # {}",
            repro(result.seed, world),
            result.kinds().join(", ")
        )?;
    }
    let failing_seeds: Vec<u64> = failing.iter().map(|r| r.seed).collect();
    if json {
        let value = serde_json::json!({
            "seeds_run": results.len(),
            "failures": failing.len(),
            "failing_seeds": failing_seeds,
            "failures_by_kind": by_kind,
            "sim_seconds": sim_seconds,
            "wall_seconds": wall_seconds,
            "jobs": jobs,
            "events": events,
            "sim_seconds_per_wall_second": sim_seconds / wall_seconds.max(1e-9),
            "bug": world.bug.map(|b| b.name()),
            "nodes": world.nodes,
            "failures_file": failures.display().to_string(),
        });
        println!("{value}");
    } else {
        println!(
            "{} seeds, {} failing {:?}, {:.0} simulated s in {:.1} wall s on {jobs} threads ({:.0} simulated s per wall s), {events} events",
            results.len(),
            failing.len(),
            by_kind,
            sim_seconds,
            wall_seconds,
            sim_seconds / wall_seconds.max(1e-9)
        );
        if !failing.is_empty() {
            println!("failing seeds written to {}", failures.display());
        }
    }
    Ok(if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run_one(args, false),
        Command::Replay(args) => run_one(args, true),
        Command::Campaign {
            seeds,
            jobs,
            world,
            failures,
            json,
        } => run_campaign(seeds, jobs, world, failures, json),
        Command::Scale {
            nodes,
            partitions,
            idle,
        } => run_scale(nodes, partitions, idle),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keel-sim: {e:#}");
            ExitCode::from(64)
        }
    }
}
