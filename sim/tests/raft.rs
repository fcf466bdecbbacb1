//! Raft's transcript tests (`core/src/raft/testdata/`): each file is a script of `> command`
//! lines with what the test cluster printed after each; the cluster must print the same today.
//! `UPDATE_TRANSCRIPTS=1 cargo test -p keel-sim --test raft` writes them anew (read the diff
//! before committing it). They run here because the core never touches files.

use keel_core::raft::testing::run_transcript;

#[test]
fn raft_transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src/raft/testdata");
    let update = std::env::var_os("UPDATE_TRANSCRIPTS").is_some();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the transcripts")
        .map(|e| e.expect("an entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 5, "transcripts in {}", dir.display());
    let mut stale = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("readable");
        let output = run_transcript(&text);
        if update {
            std::fs::write(&path, &output).expect("writable");
        } else if output != text {
            stale.push(format!("{}:\n{output}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "transcripts that differ from what the cluster prints now:\n{}",
        stale.join("\n")
    );
}
