//! The simulator's own tests: every regression seed, a time-boxed batch of fresh seeds, the
//! planted bugs (the checkers must catch them), and determinism (a seed's trace hash is the
//! same twice in one process and once more in another).

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_core::node::{Durability, PlantedBug};
use keel_sim::campaign::{campaign_until, run_seed, SeedResult};
use keel_sim::check::ViolationKind;
use keel_sim::Options;

const SECOND_NS: u64 = 1_000_000_000;

/// Options for every seed of a campaign (the seed is the campaign's to set).
fn options(
    duration_ns: u64,
    bug: Option<PlantedBug>,
    idempotent: Option<bool>,
    nodes: usize,
) -> Options {
    Options {
        seed: 0,
        duration_ns,
        bug,
        idempotent,
        nodes,
        durability: Durability::Fsync,
        groups: false,
        lifecycle: false,
        compaction: false,
        transactions: false,
    }
}

fn describe(
    result: &SeedResult,
    duration_ns: u64,
    bug: Option<PlantedBug>,
    nodes: usize,
) -> String {
    let mut bug = bug
        .map(|b| format!(" --bug {}", b.name()))
        .unwrap_or_default();
    if nodes != 1 {
        bug.push_str(&format!(" --nodes {nodes}"));
    }
    if result
        .report
        .as_ref()
        .is_some_and(|r| r.workload.contains("a group of"))
    {
        bug.push_str(" --groups");
    }
    if (result.report.as_ref()).is_some_and(|r| r.workload.contains("a lifecycle")) {
        bug.push_str(" --lifecycle");
    }
    if (result.report.as_ref()).is_some_and(|r| r.workload.contains("compacted (")) {
        bug.push_str(" --compaction");
    }
    if (result.report.as_ref()).is_some_and(|r| r.workload.contains("transactional producers")) {
        bug.push_str(" --transactions");
    }
    let what = match (&result.report, &result.panic) {
        (Some(report), _) => format!("{:#?}", report.violations),
        (None, panic) => format!("panic: {}", panic.as_deref().unwrap_or("")),
    };
    format!(
        "keel-sim run --seed {} --duration {}s{bug}\n{what}",
        result.seed,
        duration_ns / SECOND_NS
    )
}

struct Regression {
    seed: u64,
    duration_ns: u64,
    bug: Option<PlantedBug>,
    /// Every producer idempotent (`keel-sim --idempotent true`).
    idempotent: Option<bool>,
    /// Nodes in the cluster (`nodes=3` on the line; 1 if absent).
    nodes: usize,
    /// A consumer group's members consume (`groups` on the line).
    groups: bool,
    /// The log's lifecycle runs (`lifecycle` on the line).
    lifecycle: bool,
    /// The lifecycle's topic is compacted (`compaction` on the line).
    compaction: bool,
    /// Transactional producers run too (`transactions` on the line).
    transactions: bool,
}

fn regressions() -> Vec<Regression> {
    let text = include_str!("../regressions.txt");
    let mut seeds = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let seed = words.next().unwrap().parse().expect("a seed");
        let duration = humantime::parse_duration(words.next().expect("a duration")).unwrap();
        let mut bug = None;
        let mut idempotent = None;
        let mut nodes = 1;
        let mut groups = false;
        let mut lifecycle = false;
        let mut compaction = false;
        let mut transactions = false;
        for word in words {
            if let Some(n) = word.strip_prefix("nodes=") {
                nodes = n.parse().expect("a node count");
            } else if word == "idempotent" {
                idempotent = Some(true);
            } else if word == "groups" {
                groups = true;
            } else if word == "lifecycle" {
                lifecycle = true;
            } else if word == "compaction" {
                compaction = true;
            } else if word == "transactions" {
                transactions = true;
            } else {
                bug = Some(PlantedBug::from_name(word).expect("a known bug or `idempotent`"));
            }
        }
        seeds.push(Regression {
            seed,
            duration_ns: duration.as_nanos() as u64,
            bug,
            idempotent,
            nodes,
            groups,
            lifecycle,
            compaction,
            transactions,
        });
    }
    seeds
}

#[test]
fn every_regression_seed_passes() {
    let regressions = regressions();
    assert!(!regressions.is_empty());
    let mut failures = Vec::new();
    for r in &regressions {
        let result = run_seed(Options {
            seed: r.seed,
            duration_ns: r.duration_ns,
            bug: r.bug,
            idempotent: r.idempotent,
            nodes: r.nodes,
            durability: Durability::Fsync,
            groups: r.groups,
            lifecycle: r.lifecycle,
            compaction: r.compaction,
            transactions: r.transactions,
        });
        if result.exit_code() != 0 {
            failures.push(describe(&result, r.duration_ns, r.bug, r.nodes));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// New seeds on every run, on every core, for `KEEL_SIM_FRESH_SECONDS` (default 90) of wall
/// time. A failure prints its repro: add the seed to sim/regressions.txt and fix the bug.
///
/// The budget is sized to catch a failure that shows once in 20,000 seeds within a few CI
/// runs (CI's whole run must stay well under 45 minutes): the test build runs about 40-50
/// one-minute seeds per second per core, so two cores for 90 s cover 7,000-9,000 seeds; one
/// run catches such a bug with a chance of about 0.35, three runs with about 0.73. Before a release, run the longer campaign in the README
/// (Simulation).
#[test]
fn fresh_seeds_pass() {
    fresh_seeds(1, "KEEL_SIM_FRESH_SECONDS", 90, false, Lifecycle::Off);
}

/// Fresh seeds on clusters of three and five nodes, for `KEEL_SIM_FRESH_CLUSTER_SECONDS`
/// (default 45) of wall time, two thirds of it on three nodes: thousands of seeds with every
/// fault the network model has.
#[test]
fn fresh_cluster_seeds_pass() {
    fresh_seeds(
        3,
        "KEEL_SIM_FRESH_CLUSTER_SECONDS",
        30,
        false,
        Lifecycle::Off,
    );
    fresh_seeds(
        5,
        "KEEL_SIM_FRESH_CLUSTER_SECONDS",
        15,
        false,
        Lifecycle::Off,
    );
}

/// Fresh seeds with a consumer group's members as the consumers (`--groups`), on one node
/// and on three, for `KEEL_SIM_FRESH_GROUP_SECONDS` (default 40) of wall time.
#[test]
fn fresh_group_seeds_pass() {
    fresh_seeds(1, "KEEL_SIM_FRESH_GROUP_SECONDS", 20, true, Lifecycle::Off);
    fresh_seeds(3, "KEEL_SIM_FRESH_GROUP_SECONDS", 20, true, Lifecycle::Off);
}

/// Fresh seeds with the log's lifecycle on the workload's topic (`--lifecycle`: retention,
/// segment rolls, DeleteRecords, config changes), on one node and on three, for
/// `KEEL_SIM_FRESH_LIFECYCLE_SECONDS` (default 40) of wall time.
#[test]
fn fresh_lifecycle_seeds_pass() {
    fresh_seeds(
        1,
        "KEEL_SIM_FRESH_LIFECYCLE_SECONDS",
        12,
        false,
        Lifecycle::Delete,
    );
    fresh_seeds(
        3,
        "KEEL_SIM_FRESH_LIFECYCLE_SECONDS",
        12,
        false,
        Lifecycle::Delete,
    );
    fresh_seeds(
        1,
        "KEEL_SIM_FRESH_LIFECYCLE_SECONDS",
        8,
        false,
        Lifecycle::Compact,
    );
    fresh_seeds(
        3,
        "KEEL_SIM_FRESH_LIFECYCLE_SECONDS",
        8,
        false,
        Lifecycle::Compact,
    );
}

/// Fresh seeds with transactional producers and read_committed consumers
/// (`--transactions`), on one node and on three, for `KEEL_SIM_FRESH_TXN_SECONDS` (default 40)
/// of wall time.
#[test]
fn fresh_transaction_seeds_pass() {
    fresh_seeds(
        1,
        "KEEL_SIM_FRESH_TXN_SECONDS",
        20,
        false,
        Lifecycle::Transactions,
    );
    fresh_seeds(
        3,
        "KEEL_SIM_FRESH_TXN_SECONDS",
        20,
        false,
        Lifecycle::Transactions,
    );
}

/// What fresh seeds run besides the plain workload: the log's lifecycle (`--lifecycle`,
/// `--compaction`) or transactions (`--transactions`).
#[derive(Clone, Copy, PartialEq)]
enum Lifecycle {
    Off,
    Delete,
    Compact,
    Transactions,
}

fn fresh_seeds(
    nodes: usize,
    budget_var: &str,
    default_seconds: u64,
    groups: bool,
    lifecycle: Lifecycle,
) {
    let budget = Duration::from_secs(
        std::env::var(budget_var)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(default_seconds, |s| {
                let whole = match (groups || lifecycle != Lifecycle::Off, nodes) {
                    (true, _) => 40,
                    (false, 1) => 90,
                    (false, _) => 45,
                };
                s * default_seconds / whole
            }),
    );
    let start_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        & 0xffff_ffff_ffff;
    let duration_ns = 60 * SECOND_NS;
    let started = Instant::now();
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let results = campaign_until(
        start_seed..u64::MAX,
        Some(started + budget),
        jobs,
        &Options {
            groups,
            lifecycle: lifecycle == Lifecycle::Delete,
            compaction: lifecycle == Lifecycle::Compact,
            transactions: lifecycle == Lifecycle::Transactions,
            ..options(duration_ns, None, None, nodes)
        },
        &|_| {},
    );
    let failures: Vec<String> = results
        .iter()
        .filter(|r| r.exit_code() != 0)
        .map(|r| describe(r, duration_ns, None, nodes))
        .collect();
    println!(
        "fresh seeds on {nodes} node(s) from {start_seed}: {} seeds on {jobs} threads in {:.1}s",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Each planted bug must be caught, by the violation it causes, in at least a stated share
/// of 120 seeds of 30 simulated seconds (on three nodes for the bugs only a cluster shows): a
/// checker that slowly lost its teeth would fail here long before it missed a bug altogether.
/// The shares are about half of what the checkers catch today (in the order below: 86, 73,
/// 12, 46, 22, 12, and on clusters about 77, 120 and 11 of the 120 seeds). A bug caught in
/// under 3% of seeds is run on three times as many; the transactional ones are caught in 11
/// (`marker-before-append`) and 6 (`no-epoch-bump`) of their 360.
/// `ack-wrong-round` (every group credited with its whole log when any round completes)
/// needs a write to arrive while a round is in flight and a crash before the next round ends;
/// since rounds only for recovery points no longer follow every data round, it is caught
/// least.
#[test]
fn planted_bugs_are_caught() {
    const SEEDS: u64 = 120;
    let duration_ns = 30 * SECOND_NS;
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut weak = Vec::new();
    for bug in PlantedBug::ALL {
        if bug == PlantedBug::NoReannounce {
            // Too rare for a share of fresh seeds: the seeds that show it are run instead
            // (`a_node_that_slept_through_an_election_hears_of_it`).
            continue;
        }
        let nodes = if bug.needs_cluster() { 3 } else { 1 };
        let (expected, share_min, idempotent) = match bug {
            // Losing acknowledged writes.
            PlantedBug::SkipFsync => (ViolationKind::LostWrite, 0.35, None),
            PlantedBug::AckEarly => (ViolationKind::LostWrite, 0.3, None),
            PlantedBug::AckWrongRound => (ViolationKind::LostWrite, 0.05, None),
            // Writing one twice: only idempotent producers can tell.
            PlantedBug::NoDedup => (ViolationKind::Duplicate, 0.2, Some(true)),
            // A consumer read a record that a crash then replaced.
            PlantedBug::FetchPastHighWatermark => (ViolationKind::InconsistentOffset, 0.12, None),
            // Damage below the recovery point cut without a word: only seeds with lasting
            // damage (about a third) can show it.
            PlantedBug::CutSynced => (ViolationKind::LostWrite, 0.05, None),
            // On three nodes: an acknowledgement before a majority has the batch durably.
            PlantedBug::AckBeforeCommit => (ViolationKind::UnreplicatedAck, 0.3, None),
            // Every election shows it: a vote leaves before it is durable.
            PlantedBug::VoteWithoutSync => (ViolationKind::UndurableVote, 0.5, None),
            // Replicas that keep a prefix their leader never had: only seeds where a follower
            // held entries a new leader lacked, and both moved past them, show it.
            PlantedBug::NoTruncate => (ViolationKind::ReplicasDiverge, 0.04, None),
            // A zombie's commit of an earlier generation, taken: the group's committed offset
            // goes back (with `--groups`; only members that sent one in a later generation,
            // while the partition moved on, show it).
            PlantedBug::StaleCommit => (ViolationKind::GroupCommitBack, 0.03, None),
            // Retention that ignores retention.ms (with `--lifecycle`): a consumer below the
            // new start finds acknowledged records gone too young.
            PlantedBug::RetentionEarly => (ViolationKind::RemovedEarly, 0.3, None),
            // A cleaner that drops a key's newest record (with `--compaction`): a consumer
            // that reads the cleaned log finds it gone with nothing newer of its key.
            PlantedBug::CleanerDropsNewest => (ViolationKind::CompactedLatest, 0.3, None),
            // Markers before the prepared outcome is written (with `--transactions`, on three
            // nodes): a coordinator that fails over aborts what some partitions already
            // committed (read in part, or read although aborted). Only a coordinator that
            // fails between its markers and its prepare record's commit shows it (the
            // workload crashes coordinators mid-commit, some with their producer).
            PlantedBug::MarkerBeforeAppend => (ViolationKind::TxnPartial, 0.015, None),
            // No epoch bump at a transaction's end (with `--transactions`): a batch of a
            // transaction given up, arriving late over a stalled connection, lands in the
            // next one (only EndTxn v5 producers with stalls show it, a sixth of the seeds).
            PlantedBug::NoEpochBump => (ViolationKind::AbortedRead, 0.008, None),
            PlantedBug::NoReannounce => unreachable!("skipped above"),
        };
        // A bug that shows in few seeds gets three times as many: its share is measured, not
        // guessed from a handful.
        let seeds = if share_min < 0.03 { 3 * SEEDS } else { SEEDS };
        let results = campaign_until(
            0..seeds,
            None,
            jobs,
            &Options {
                groups: bug == PlantedBug::StaleCommit,
                lifecycle: bug == PlantedBug::RetentionEarly,
                compaction: bug == PlantedBug::CleanerDropsNewest,
                transactions: matches!(
                    bug,
                    PlantedBug::MarkerBeforeAppend | PlantedBug::NoEpochBump
                ),
                ..options(duration_ns, Some(bug), idempotent, nodes)
            },
            &|_| {},
        );
        // A transaction's atomicity broken shows as one or the other, whichever the reader met.
        let atomicity = [ViolationKind::AbortedRead, ViolationKind::TxnPartial];
        let caught: Vec<u64> = results
            .iter()
            .filter(|r| {
                r.report.as_ref().is_some_and(|r| {
                    r.has_violation(expected)
                        || (atomicity.contains(&expected)
                            && atomicity.iter().any(|k| r.has_violation(*k)))
                })
            })
            .map(|r| r.seed)
            .collect();
        let share = caught.len() as f64 / seeds as f64;
        println!(
            "{}: {} in {} of {seeds} seeds (at least {share_min} wanted)",
            bug.name(),
            expected.name(),
            caught.len()
        );
        if share < share_min {
            weak.push(format!(
                "--bug {}: {} in {} of {seeds} seeds, less than {share_min}",
                bug.name(),
                expected.name(),
                caught.len()
            ));
        }
    }
    assert!(weak.is_empty(), "{}", weak.join("\n"));
}

/// A leader that announces its epoch only once (`--bug no-reannounce`) can leave a node that
/// slept through the election (a frozen process whose successor's `BeginEpoch` was lost)
/// believing for ever that it leads; the check that each partition has one leader once the
/// cluster settled catches it. About one seed in five hundred reaches that state, so these
/// four (of the first 2,000, 30 simulated seconds on three nodes) run with the bug, which
/// must be caught, and without it, which must pass.
#[test]
fn a_node_that_slept_through_an_election_hears_of_it() {
    // (Seed 370 showed it until the lifecycle's timers moved its schedule, 469 and 687 until
    // segment summaries did; 489, 823 and 1126 until a follower's fetch after its sync
    // did; 747, 1304 and 1729 do now.)
    for seed in [680u64, 747, 1304, 1729] {
        let run = |bug| {
            let options = Options {
                seed,
                ..options(30 * SECOND_NS, bug, None, 3)
            };
            run_seed(options).report.expect("no panic")
        };
        let planted = run(Some(PlantedBug::NoReannounce));
        assert!(
            planted.has_violation(ViolationKind::Liveness),
            "seed {seed}: a stale leader went unnoticed: {:?}",
            planted.violations
        );
        let fixed = run(None);
        assert!(
            fixed.violations.is_empty(),
            "seed {seed}: {:?}",
            fixed.violations
        );
    }
}

#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    let duration_ns = 20 * SECOND_NS;
    // Four single-node seeds and a three-node one.
    for (seed, nodes) in [(1u64, 1usize), (7, 1), (42, 1), (1_000_003, 1), (42, 3)] {
        let options = Options {
            seed,
            ..options(duration_ns, None, None, nodes)
        };
        let first = run_seed(options.clone()).report.expect("no panic");
        let second = run_seed(options).report.expect("no panic");
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} on {nodes} node(s) in-process"
        );
        assert_eq!(first.events, second.events);
        if nodes > 1 {
            assert!(
                first.faults.keys().any(|k| k.starts_with("peer-frame")),
                "the network's faults are in the run: {first:?}"
            );
        }
        let output = Command::new(env!("CARGO_BIN_EXE_keel-sim"))
            .args(["run", "--seed", &seed.to_string(), "--duration", "20s"])
            .args(["--nodes", &nodes.to_string(), "--json"])
            .output()
            .expect("keel-sim runs");
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("keel-sim --json prints JSON");
        assert_eq!(
            json["report"]["trace_hash"].as_u64(),
            Some(first.trace_hash),
            "seed {seed} on {nodes} node(s) in a child process: {json}"
        );
    }
    // Different seeds make different runs.
    let a = run_seed(Options {
        seed: 1,
        duration_ns,
        bug: None,
        idempotent: None,
        nodes: 1,
        durability: Durability::Fsync,
        groups: false,
        lifecycle: false,
        compaction: false,
        transactions: false,
    });
    let b = run_seed(Options {
        seed: 2,
        duration_ns,
        bug: None,
        idempotent: None,
        nodes: 1,
        durability: Durability::Fsync,
        groups: false,
        lifecycle: false,
        compaction: false,
        transactions: false,
    });
    assert_ne!(a.report.unwrap().trace_hash, b.report.unwrap().trace_hash);
}

/// `durability = "replicated"` acknowledges what a majority holds in memory: a crash of that
/// majority at once loses acknowledged writes, which is what the mode allows (and why fsync
/// is the default). Seed 108 on three nodes crashes a majority at once twice and no
/// node alone: with replicated durability it loses
/// acknowledged records; with fsync, under the same kind of schedule, it loses nothing. (A change to the workload or the nodes moves every seed's
/// schedule: then find another seed with `keel-sim run --nodes 3 --durability replicated`.)
#[test]
fn a_correlated_crash_loses_what_replicated_durability_acknowledged() {
    let seed = |durability| {
        run_seed(Options {
            seed: 108,
            durability,
            ..options(30 * SECOND_NS, None, None, 3)
        })
        .report
        .expect("no panic")
    };
    let replicated = seed(Durability::Replicated);
    assert!(
        replicated.faults.contains_key("correlated-crash"),
        "{replicated:?}"
    );
    assert_eq!(replicated.faults.get("crash"), None, "{replicated:?}");
    assert!(
        replicated.has_violation(ViolationKind::LostWrite),
        "{:#?}",
        replicated.violations
    );
    let fsync = seed(Durability::Fsync);
    assert!(fsync.faults.contains_key("correlated-crash"), "{fsync:?}");
    assert!(fsync.violations.is_empty(), "{:#?}", fsync.violations);
}
