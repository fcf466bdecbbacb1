//! keel-core stays pure (DESIGN.md section 2): no async runtime or socket crate in its
//! dependency tree, the oracle codec only as a dev-dependency, and clippy's disallowed list
//! (core/clippy.toml) neither weakened nor silenced in core's sources.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

#[test]
fn core_dependency_tree_has_no_io_runtime_and_no_oracle() {
    let output = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args([
            "tree",
            "-p",
            "keel-core",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8(output.stdout).unwrap();
    assert!(
        tree.contains("keel-core"),
        "unexpected cargo tree output: {tree}"
    );
    for line in tree.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        for forbidden in ["tokio", "mio", "socket2", "kafka-protocol", "madsim"] {
            assert!(
                name != forbidden && !name.starts_with(&format!("{forbidden}-")),
                "keel-core depends on {name}: core must stay pure"
            );
        }
    }
}

const REQUIRED_DISALLOWED: &[&str] = &[
    "std::time::Instant::now",
    "std::time::SystemTime::now",
    "std::thread::spawn",
    "std::collections::HashMap",
    "std::collections::HashSet",
    "std::fs::File",
    "std::fs::read",
    "std::fs::write",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
];

#[test]
fn clippy_disallows_the_escape_hatches() {
    let config = std::fs::read_to_string(workspace_root().join("core/clippy.toml"))
        .expect("core/clippy.toml exists");
    for path in REQUIRED_DISALLOWED {
        assert!(
            config.contains(&format!("path = \"{path}\"")),
            "core/clippy.toml no longer disallows {path}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_sources_never_silence_the_disallowed_lints() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("core/src"), &mut files);
    assert!(files.len() > 5);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for lint in [
            "disallowed_methods",
            "disallowed_types",
            "disallowed_macros",
        ] {
            assert!(
                !text.contains(lint),
                "{} mentions clippy::{lint}: core may not bypass it",
                file.display()
            );
        }
        assert!(
            !text.contains("std::net::"),
            "{} reaches for std::net",
            file.display()
        );
        assert!(
            !text.contains("std::fs::"),
            "{} reaches for std::fs",
            file.display()
        );
    }
}

/// The simulator plants bugs through `Config::planted_bug`; the production binary must have no
/// way to reach it: `net/` builds its config from `..Config::default()` and never names it.
#[test]
fn the_production_binary_cannot_plant_a_bug() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("net"), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for name in ["planted_bug", "PlantedBug", "planted_cut_synced"] {
            assert!(
                !text.contains(name),
                "{} names {name}: only the simulator may plant bugs",
                file.display()
            );
        }
    }
}
