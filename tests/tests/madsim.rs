//! The adapter under madsim (`net/tests/madsim.rs`: three nodes of the real server code with
//! kills, restarts, freezes and partitions, every acknowledged record read back, a seed run
//! twice to the same result), as part of `cargo test`. It needs `--cfg madsim` on the whole
//! build, so it runs in a cargo of its own with a target directory of its own
//! (`target/madsim`), which CI's time-boxed batch of seeds then reuses.

use std::path::Path;
use std::process::Command;

#[test]
fn the_real_adapter_keeps_every_acknowledged_record_under_madsim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg madsim"),
        _ => "--cfg madsim".to_string(),
    };
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "test",
            "--locked",
            "-p",
            "keel-net",
            "--test",
            "madsim",
            "--target-dir",
            "target/madsim",
            "--",
            "--nocapture",
        ])
        .env("RUSTFLAGS", rustflags)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // What the seeds did (one line each), and the failure in full if there was one.
    for line in stdout
        .lines()
        .filter(|l| l.starts_with("seed ") || l.contains("seeds in"))
    {
        println!("{line}");
    }
    assert!(
        output.status.success(),
        "the madsim test failed:\n{stdout}\n{}",
        stderr
            .lines()
            .rev()
            .take(200)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the madsim test did not run:\n{stdout}"
    );
}
