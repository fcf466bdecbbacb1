//! `keel cluster status`: the cluster as any node describes it, through the Kafka protocol
//! alone. Metadata names the nodes, the controller and each partition's leader and
//! replicas, and each leader the ISR of its partitions (a follower's Metadata names only the
//! leader: only a leader knows which followers keep up); an ApiVersions round trip to each
//! node says whether this command reaches it;
//! DescribeQuorum (KIP-595), asked of the controller for the metadata quorum
//! (`__cluster_metadata` partition 0) and of each partition's leader for its partitions,
//! gives every voter's log end and last fetch as the leader knows them, hence lag.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::protocol::codes;
use keel_core::protocol::messages::{
    api_versions_request, describe_quorum_request, describe_quorum_response, metadata_request,
    ApiVersionsRequest, DescribeQuorumRequest, DescribeQuorumResponse, MetadataRequest,
    MetadataResponse,
};
use keel_core::protocol::{ApiKey, Request, Response};

use crate::client::{version_of, Client, ClientError};

/// The metadata quorum's log, as KRaft names it.
const METADATA_TOPIC: &str = "__cluster_metadata";
/// Partitions asked of a leader in one DescribeQuorum request (well under the most a Keel
/// node answers, `limits::DESCRIBE_QUORUM_PARTITIONS_MAX`).
const DESCRIBE_QUORUM_PARTITIONS_PER_REQUEST: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no bootstrap server answered: {0}")]
    NoBootstrap(String),
}

/// What a quorum's leader knows of one voter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    /// -1: not known (no fetch since the leader was elected).
    pub log_end_offset: i64,
    /// ms since the Unix epoch on the leader's clock; -1: never.
    pub last_fetch_ms: i64,
}

/// A Raft group as its leader describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    pub leader: i32,
    pub epoch: i32,
    pub high_watermark: i64,
    pub voters: Vec<Voter>,
}

impl Quorum {
    fn log_end_of(&self, id: i32) -> Option<i64> {
        (self.voters.iter())
            .find(|v| v.id == id)
            .map(|v| v.log_end_offset)
            .filter(|end| *end >= 0)
    }

    /// How far `id`'s log end is behind the leader's (`None`: not known).
    pub fn lag_of(&self, id: i32) -> Option<i64> {
        let leader = self.log_end_of(self.leader)?;
        Some((leader - self.log_end_of(id)?).max(0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: i32,
    /// Its client address, if it registered one.
    pub address: Option<String>,
    pub rack: Option<String>,
    /// `Ok` if it answered ApiVersions to this command; why not otherwise.
    pub reachable: Result<(), String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Metadata's error for the partition (LEADER_NOT_AVAILABLE while electing, ...).
    pub error_code: i16,
    pub leader: i32,
    pub epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Its leader's DescribeQuorum answer, or why there is none.
    pub quorum: Result<Quorum, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The bootstrap server that answered Metadata.
    pub asked: String,
    pub cluster_id: Option<String>,
    pub controller: Option<i32>,
    pub nodes: Vec<NodeStatus>,
    /// The metadata quorum as its leader describes it, or why it could not be asked.
    pub metadata_quorum: Result<Quorum, String>,
    pub partitions: Vec<PartitionStatus>,
}

/// Asks the cluster behind `bootstrap` (tried in turn) what it looks like, waiting at most
/// `timeout` for any one connection or answer.
pub fn gather(bootstrap: &[String], timeout: Duration) -> Result<ClusterStatus, StatusError> {
    let mut failures = Vec::new();
    let mut answered = None;
    for address in bootstrap {
        match Client::connect(address, timeout).and_then(|mut c| Ok((metadata(&mut c)?, c))) {
            Ok(found) => {
                answered = Some(found);
                break;
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    let Some((metadata, bootstrap_client)) = answered else {
        return Err(StatusError::NoBootstrap(failures.join("; ")));
    };
    let asked = bootstrap_client.address().to_string();
    let controller = Some(metadata.controller_id).filter(|id| *id >= 0);

    // Every node Metadata names, each probed on a connection of its own (kept for the
    // DescribeQuorum requests that follow).
    let mut clients: BTreeMap<i32, Client> = BTreeMap::new();
    let mut nodes: BTreeMap<i32, NodeStatus> = BTreeMap::new();
    for broker in &metadata.brokers {
        let address = format!("{}:{}", broker.host, broker.port);
        let reachable = match Client::connect(&address, timeout).and_then(probe) {
            Ok(client) => {
                clients.insert(broker.node_id, client);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        nodes.insert(
            broker.node_id,
            NodeStatus {
                id: broker.node_id,
                address: Some(address),
                rack: broker.rack.clone(),
                reachable,
            },
        );
    }

    let metadata_quorum = match controller {
        None => Err("no controller is known".to_string()),
        Some(id) => match clients.get_mut(&id) {
            None => Err(format!("the controller, node {id}, is out of reach")),
            Some(client) => {
                let asked = [(METADATA_TOPIC.to_string(), vec![0])];
                describe_quorum(client, &asked).and_then(|mut answers| {
                    (answers.remove(&(METADATA_TOPIC.to_string(), 0)))
                        .unwrap_or_else(|| Err("no answer for it".into()))
                })
            }
        },
    };
    // Voters the quorum knows of that never registered an address are nodes too.
    if let Ok(quorum) = &metadata_quorum {
        for voter in &quorum.voters {
            nodes.entry(voter.id).or_insert_with(|| NodeStatus {
                id: voter.id,
                address: None,
                rack: None,
                reachable: Err("no client address registered".into()),
            });
        }
    }

    // Each leader is asked about the partitions it leads.
    let mut led: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    let mut partitions = Vec::new();
    for topic in &metadata.topics {
        let name = topic.name.clone().unwrap_or_default();
        for p in &topic.partitions {
            if p.leader_id >= 0 {
                led.entry(p.leader_id)
                    .or_default()
                    .push((name.clone(), p.partition_index));
            }
            partitions.push(PartitionStatus {
                topic: name.clone(),
                partition: p.partition_index,
                error_code: p.error_code,
                leader: p.leader_id,
                epoch: p.leader_epoch,
                replicas: p.replica_nodes.clone(),
                isr: p.isr_nodes.clone(),
                quorum: Err("no leader".into()),
            });
        }
    }
    // A follower's Metadata names only the leader in a partition's ISR (only a leader
    // knows which followers keep up): each leader is asked for the ISR of its own.
    let mut isrs: BTreeMap<(String, i32), (i32, Vec<i32>)> = BTreeMap::new();
    for (leader, owned) in &led {
        let Some(client) = clients.get_mut(leader) else {
            continue;
        };
        let mut names: Vec<String> = owned.iter().map(|(topic, _)| topic.clone()).collect();
        names.dedup();
        let Ok(answer) = metadata_of(client, Some(names)) else {
            continue;
        };
        for topic in answer.topics {
            let name = topic.name.unwrap_or_default();
            for p in topic
                .partitions
                .into_iter()
                .filter(|p| p.leader_id == *leader)
            {
                isrs.insert(
                    (name.clone(), p.partition_index),
                    (p.leader_epoch, p.isr_nodes),
                );
            }
        }
    }
    for p in &mut partitions {
        if let Some((epoch, isr)) = isrs.remove(&(p.topic.clone(), p.partition)) {
            (p.epoch, p.isr) = (epoch, isr);
        }
    }

    let mut quorums = Quorums::new();
    for (leader, owned) in led {
        let Some(client) = clients.get_mut(&leader) else {
            for key in owned {
                quorums.insert(
                    key,
                    Err(format!("its leader, node {leader}, is out of reach")),
                );
            }
            continue;
        };
        for chunk in owned.chunks(DESCRIBE_QUORUM_PARTITIONS_PER_REQUEST) {
            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (topic, partition) in chunk {
                by_topic.entry(topic.clone()).or_default().push(*partition);
            }
            let asked: Vec<(String, Vec<i32>)> = by_topic.into_iter().collect();
            match describe_quorum(client, &asked) {
                Ok(answers) => quorums.extend(answers),
                Err(reason) => {
                    for key in chunk {
                        quorums.insert(key.clone(), Err(reason.clone()));
                    }
                }
            }
        }
    }
    for p in &mut partitions {
        if let Some(quorum) = quorums.remove(&(p.topic.clone(), p.partition)) {
            p.quorum = quorum;
        }
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(ClusterStatus {
        asked,
        cluster_id: metadata.cluster_id,
        controller,
        nodes: nodes.into_values().collect(),
        metadata_quorum,
        partitions,
    })
}

fn metadata(client: &mut Client) -> Result<MetadataResponse, ClientError> {
    metadata_of(client, None)
}

/// Metadata for `topics` (every topic if `None`), creating none.
fn metadata_of(
    client: &mut Client,
    topics: Option<Vec<String>>,
) -> Result<MetadataResponse, ClientError> {
    let topics = topics.map(|names| {
        (names.into_iter())
            .map(|name| metadata_request::MetadataRequestTopic {
                name: Some(name),
                ..Default::default()
            })
            .collect()
    });
    let request = Request::Metadata(MetadataRequest {
        topics,
        allow_auto_topic_creation: false,
        ..MetadataRequest::default()
    });
    match client.call(version_of(ApiKey::Metadata), request)? {
        Response::Metadata(response) => Ok(response),
        _ => Err(client.unexpected(ApiKey::Metadata)),
    }
}

/// An ApiVersions round trip: the node is up and speaks Kafka.
fn probe(mut client: Client) -> Result<Client, ClientError> {
    let request = Request::ApiVersions(ApiVersionsRequest {
        client_software_name: "keel".into(),
        client_software_version: env!("CARGO_PKG_VERSION").into(),
        ..api_versions_request::ApiVersionsRequest::default()
    });
    match client.call(version_of(ApiKey::ApiVersions), request)? {
        Response::ApiVersions(r) if r.error_code == codes::NONE => Ok(client),
        Response::ApiVersions(r) => Err(client.refused(ApiKey::ApiVersions, r.error_code)),
        _ => Err(client.unexpected(ApiKey::ApiVersions)),
    }
}

/// DescribeQuorum's answers by (topic, partition): a quorum, or why not.
type Quorums = BTreeMap<(String, i32), Result<Quorum, String>>;

/// Each partition's DescribeQuorum answer, by (topic, partition); `Err` for the whole
/// request when it could not be asked.
fn describe_quorum(client: &mut Client, asked: &[(String, Vec<i32>)]) -> Result<Quorums, String> {
    let request = Request::DescribeQuorum(DescribeQuorumRequest {
        topics: (asked.iter())
            .map(|(topic, partitions)| describe_quorum_request::TopicData {
                topic_name: topic.clone(),
                partitions: (partitions.iter())
                    .map(|p| describe_quorum_request::PartitionData {
                        partition_index: *p,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..DescribeQuorumRequest::default()
    });
    let response = match client.call(version_of(ApiKey::DescribeQuorum), request) {
        Ok(Response::DescribeQuorum(response)) => response,
        Ok(_) => return Err(client.unexpected(ApiKey::DescribeQuorum).to_string()),
        // A node that does not serve DescribeQuorum closes the connection, as Kafka does.
        Err(e) => return Err(format!("DescribeQuorum: {e}")),
    };
    Ok(quorums_of(response))
}

fn quorums_of(response: DescribeQuorumResponse) -> Quorums {
    let mut answers = BTreeMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            let key = (topic.topic_name.clone(), p.partition_index);
            let error = (p.error_code != codes::NONE).then_some(p.error_code);
            let code = response.error_code;
            let answer = match error.or((code != codes::NONE).then_some(code)) {
                Some(code) => Err(match p.error_message {
                    Some(message) => format!("{}: {message}", error_name(code)),
                    None => error_name(code),
                }),
                None => Ok(Quorum {
                    leader: p.leader_id,
                    epoch: p.leader_epoch,
                    high_watermark: p.high_watermark,
                    voters: (p.current_voters.iter())
                        .map(|v: &describe_quorum_response::ReplicaState| Voter {
                            id: v.replica_id,
                            log_end_offset: v.log_end_offset,
                            last_fetch_ms: v.last_fetch_timestamp,
                        })
                        .collect(),
                }),
            };
            answers.insert(key, answer);
        }
    }
    answers
}

/// Kafka's name for the error codes a status answer may carry.
fn error_name(code: i16) -> String {
    match code {
        codes::UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION".into(),
        codes::LEADER_NOT_AVAILABLE => "LEADER_NOT_AVAILABLE".into(),
        codes::NOT_LEADER_OR_FOLLOWER => "NOT_LEADER_OR_FOLLOWER".into(),
        codes::KAFKA_STORAGE_ERROR => "KAFKA_STORAGE_ERROR (offline)".into(),
        codes::UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION".into(),
        other => format!("error {other}"),
    }
}

/// The status as text: a summary, the nodes, the partitions, and what the columns mean.
/// `now_ms` (this machine's clock) dates the last fetches.
pub fn render(status: &ClusterStatus, now_ms: i64) -> String {
    let mut out = String::new();
    let reachable = status.nodes.iter().filter(|n| n.reachable.is_ok()).count();
    let count = status.nodes.len();
    out.push_str(&format!(
        "Cluster {} (asked {}): {count} node{}, {reachable} reachable\n",
        status.cluster_id.as_deref().unwrap_or("(no id)"),
        status.asked,
        if count == 1 { "" } else { "s" },
    ));
    match (&status.controller, &status.metadata_quorum) {
        (Some(id), Ok(q)) => out.push_str(&format!(
            "Controller (metadata quorum leader): node {id}, epoch {}, metadata high watermark {}\n",
            q.epoch, q.high_watermark
        )),
        (Some(id), Err(reason)) => out.push_str(&format!(
            "Controller (metadata quorum leader): node {id} (quorum not described: {reason})\n"
        )),
        (None, _) => out.push_str("Controller (metadata quorum leader): none known\n"),
    }

    out.push('\n');
    let mut nodes = Table::new([
        "NODE",
        "ADDRESS",
        "RACK",
        "REACHABLE",
        "METADATA QUORUM",
        "METADATA LOG END",
        "LAST FETCH",
    ]);
    let quorum = status.metadata_quorum.as_ref().ok();
    for node in &status.nodes {
        let voter = quorum.and_then(|q| q.voters.iter().find(|v| v.id == node.id));
        let role = match (quorum, voter) {
            (Some(q), _) if q.leader == node.id => "leader",
            (_, Some(_)) => "voter",
            (Some(_), None) => "-",
            (None, None) => "?",
        };
        nodes.row([
            node.id.to_string(),
            node.address.clone().unwrap_or_else(|| "-".into()),
            node.rack.clone().unwrap_or_else(|| "-".into()),
            if node.reachable.is_ok() { "yes" } else { "no" }.to_string(),
            role.to_string(),
            voter.map_or("-".into(), |v| offset(v.log_end_offset)),
            voter.map_or("-".into(), |v| age(v.last_fetch_ms, now_ms)),
        ]);
    }
    out.push_str(&nodes.render());
    for node in &status.nodes {
        if let Err(reason) = &node.reachable {
            out.push_str(&format!("  node {} not reached: {reason}\n", node.id));
        }
    }

    out.push('\n');
    let mut table = Table::new([
        "TOPIC",
        "PARTITION",
        "LEADER",
        "EPOCH",
        "HIGH WATERMARK",
        "REPLICAS",
        "ISR",
        "LAG",
    ]);
    let mut notes = Vec::new();
    for p in &status.partitions {
        let lag = match &p.quorum {
            Ok(q) => {
                let lags: Vec<String> = (p.replicas.iter())
                    .filter(|r| **r != q.leader)
                    .map(|r| format!("{r}:{}", q.lag_of(*r).map_or("?".into(), |l| l.to_string())))
                    .collect();
                if lags.is_empty() {
                    "-".to_string()
                } else {
                    lags.join(" ")
                }
            }
            Err(reason) => {
                if p.leader >= 0 {
                    notes.push(format!("  {}-{}: {reason}", p.topic, p.partition));
                }
                "-".to_string()
            }
        };
        table.row([
            p.topic.clone(),
            p.partition.to_string(),
            match p.leader {
                leader if leader >= 0 => leader.to_string(),
                _ => format!("none ({})", error_name(p.error_code)),
            },
            p.epoch.to_string(),
            (p.quorum.as_ref()).map_or("-".into(), |q| offset(q.high_watermark)),
            list(&p.replicas),
            list(&p.isr),
            lag,
        ]);
    }
    if status.partitions.is_empty() {
        out.push_str("No topics.\n");
    } else {
        out.push_str(&table.render());
        for note in notes {
            out.push_str(&note);
            out.push('\n');
        }
    }
    out.push_str(
        "\nREACHABLE: the node answered this command. METADATA LOG END and LAST FETCH: as the \
         controller last\nheard from each voter. LAG: offsets each follower's log is behind \
         its leader's log end, as\nthe leader last heard (?: no fetch since the leader's \
         election).\n",
    );
    out
}

fn offset(offset: i64) -> String {
    if offset < 0 {
        "?".into()
    } else {
        offset.to_string()
    }
}

fn age(at_ms: i64, now_ms: i64) -> String {
    if at_ms < 0 {
        return "never".into();
    }
    let ms = (now_ms - at_ms).max(0);
    if ms < 100 {
        "now".into()
    } else {
        format!("{:.1} s ago", ms as f64 / 1_000.0)
    }
}

fn list(ids: &[i32]) -> String {
    let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
    if ids.is_empty() {
        "-".into()
    } else {
        ids.join(",")
    }
}

/// Columns padded to their widest cell.
struct Table<const N: usize> {
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(headers: [&str; N]) -> Table<N> {
        Table {
            rows: vec![headers.map(String::from)],
        }
    }

    fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths = [0; N];
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 < N {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quorum() -> Quorum {
        Quorum {
            leader: 2,
            epoch: 3,
            high_watermark: 90,
            voters: vec![
                Voter {
                    id: 1,
                    log_end_offset: 95,
                    last_fetch_ms: 8_750,
                },
                Voter {
                    id: 2,
                    log_end_offset: 100,
                    last_fetch_ms: 10_000,
                },
                Voter {
                    id: 3,
                    log_end_offset: -1,
                    last_fetch_ms: -1,
                },
            ],
        }
    }

    #[test]
    fn lag_is_how_far_a_follower_is_behind_its_leader_s_log_end() {
        let q = quorum();
        assert_eq!(q.lag_of(1), Some(5));
        assert_eq!(q.lag_of(2), Some(0));
        assert_eq!(q.lag_of(3), None, "not known before its first fetch");
        assert_eq!(q.lag_of(4), None, "not a voter");
    }

    #[test]
    fn the_status_reads_as_tables() {
        let status = ClusterStatus {
            asked: "127.0.0.1:9092".into(),
            cluster_id: Some("keel-cluster".into()),
            controller: Some(2),
            nodes: vec![
                NodeStatus {
                    id: 1,
                    address: Some("127.0.0.1:9092".into()),
                    rack: None,
                    reachable: Ok(()),
                },
                NodeStatus {
                    id: 2,
                    address: Some("127.0.0.1:9093".into()),
                    rack: Some("a".into()),
                    reachable: Ok(()),
                },
                NodeStatus {
                    id: 3,
                    address: Some("127.0.0.1:9094".into()),
                    rack: None,
                    reachable: Err("cannot reach 127.0.0.1:9094: refused".into()),
                },
            ],
            metadata_quorum: Ok(quorum()),
            partitions: vec![PartitionStatus {
                topic: "orders".into(),
                partition: 0,
                error_code: 0,
                leader: 2,
                epoch: 3,
                replicas: vec![1, 2, 3],
                isr: vec![1, 2],
                quorum: Ok(quorum()),
            }],
        };
        let text = render(&status, 10_050);
        assert!(text.contains("Cluster keel-cluster (asked 127.0.0.1:9092): 3 nodes, 2 reachable"));
        assert!(text.contains("Controller (metadata quorum leader): node 2, epoch 3"));
        let lines: Vec<&str> = text.lines().collect();
        let node = |id: &str| lines.iter().find(|l| l.starts_with(id)).copied().unwrap();
        assert_eq!(
            node("1 ").split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "127.0.0.1:9092",
                "-",
                "yes",
                "voter",
                "95",
                "1.3",
                "s",
                "ago"
            ]
        );
        assert_eq!(
            node("2 ").split_whitespace().collect::<Vec<_>>(),
            ["2", "127.0.0.1:9093", "a", "yes", "leader", "100", "now"]
        );
        assert!(node("3 ").contains(" no "));
        assert!(text.contains("node 3 not reached: cannot reach 127.0.0.1:9094"));
        let row = lines.iter().find(|l| l.starts_with("orders")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["orders", "0", "2", "3", "90", "1,2,3", "1,2", "1:5", "3:?"]
        );
    }
}
