//! Whose data directory this is: `keel.properties` names the cluster and the node that wrote
//! it (Kafka's `meta.properties`). A node started on a directory of another cluster or
//! another node id refuses to start and names the mismatch: it would otherwise serve, and
//! vote with, another node's logs and votes.

use std::io::Write;
use std::path::Path;

const FILE_NAME: &str = "keel.properties";

/// Checks the data directory's identity against `cluster_id` and `node_id`, recording them
/// if the directory has none yet (a new directory, or one from before the file existed).
pub fn check(data_dir: &Path, cluster_id: &str, node_id: i32) -> anyhow::Result<()> {
    let path = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let field = |key: &str| {
                (text.lines())
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                    .map(str::trim)
                    .map(String::from)
            };
            let (found_cluster, found_node) = (field("cluster.id"), field("node.id"));
            if found_cluster.as_deref() != Some(cluster_id) {
                anyhow::bail!(
                    "{} belongs to cluster {:?}, not {cluster_id:?}: start with that cluster id or another data directory",
                    data_dir.display(),
                    found_cluster.unwrap_or_default()
                );
            }
            if found_node != Some(node_id.to_string()) {
                anyhow::bail!(
                    "{} belongs to node {}, not node {node_id}: start with that node id or another data directory",
                    data_dir.display(),
                    found_node.unwrap_or_default()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            // Written whole to a new file, synced, then renamed over and the directory synced:
            // a crash leaves the old state or the new, never half a file.
            let temporary = data_dir.join(format!("{FILE_NAME}.new"));
            let mut file = std::fs::File::create(&temporary)?;
            writeln!(file, "cluster.id={cluster_id}\nnode.id={node_id}")?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_its_cluster_and_node() {
        let dir = std::env::temp_dir().join(format!("keel-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        check(&dir, "c1", 1).unwrap();
        check(&dir, "c1", 1).unwrap();
        let other_node = check(&dir, "c1", 2).unwrap_err().to_string();
        assert!(other_node.contains("node 1, not node 2"), "{other_node}");
        let other_cluster = check(&dir, "c2", 1).unwrap_err().to_string();
        assert!(other_cluster.contains("\"c1\""), "{other_cluster}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
