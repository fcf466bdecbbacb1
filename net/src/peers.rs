//! Links between cluster nodes over TCP: one connection per node pair, carrying the node's
//! peer frames (every Raft group's messages for that peer, coalesced, each frame with its
//! size and CRC: `keel_core::raft::wire`) both ways.
//!
//! The node with the lower id dials; the other accepts on its peer listener. Each side
//! starts with a hello (a magic, the wire version, the cluster id, who it is and whom it
//! means to reach) and checks the other's: a node of another cluster, another version, or
//! not among the voters is refused, with a clear error on both sides. A dialer that lost its
//! connection, or was refused, dials again after a backoff that doubles up to a few seconds,
//! with jitter.
//!
//! Nothing here is trusted or buffered without limit: a frame's size is checked before it is
//! read (the core checks its CRC and its sense), frames read wait in the owner's bounded
//! inbound queue (a peer that floods is slowed by TCP, not buffered), and frames to send wait
//! in a bounded queue per peer: a frame that finds it full is dropped, which the receiving
//! node sees as a gap in the frames' numbers and recovers from (the core's links resend what
//! matters). A lost connection loses the frames in flight the same way.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use keel_core::limits::{
    PEER_CLUSTER_ID_MAX_BYTES, PEER_LINK_SILENCE_MAX_MS, PEER_SEND_QUEUE_FRAMES_MAX,
};
use keel_core::raft::wire;
use keel_core::raft::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::server::Event;

/// The first dial again after a failure, and the most a backoff grows to.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A hello must arrive within this long of the connection.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// A link that brings nothing for this long is closed (and dialled again): the peer is
/// frozen or gone without closing it (`limits::PEER_LINK_SILENCE_MAX_MS` says why).
const LINK_SILENCE_MAX: Duration = Duration::from_millis(PEER_LINK_SILENCE_MAX_MS);
const HELLO_MAGIC: &[u8; 8] = b"KEELPEER";
/// The peer protocol's version: the hello's layout and the frames' (`wire::PEER_WIRE_VERSION`).
const PEER_PROTOCOL_VERSION: u16 = 1;

/// What a node says of itself when a link opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.cluster_id.len());
        out.extend_from_slice(HELLO_MAGIC);
        out.extend_from_slice(&PEER_PROTOCOL_VERSION.to_be_bytes());
        out.push(wire::PEER_WIRE_VERSION);
        out.extend_from_slice(&self.from.to_be_bytes());
        out.extend_from_slice(&self.to.to_be_bytes());
        let id =
            &self.cluster_id.as_bytes()[..self.cluster_id.len().min(PEER_CLUSTER_ID_MAX_BYTES)];
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out
    }

    /// Reads a hello, or says why what arrived is not one this node can talk to.
    async fn read(stream: &mut TcpStream) -> Result<Hello, String> {
        let mut head = [0u8; 8 + 2 + 1 + 4 + 4 + 1];
        let read = tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut head)).await;
        match read {
            Err(_) => return Err("no hello within the timeout".into()),
            Ok(Err(e)) => return Err(format!("the connection ended before its hello: {e}")),
            Ok(Ok(_)) => {}
        }
        if &head[..8] != HELLO_MAGIC {
            return Err("not a Keel peer (a Kafka client on the peer port?)".into());
        }
        let version = u16::from_be_bytes([head[8], head[9]]);
        if version != PEER_PROTOCOL_VERSION || head[10] != wire::PEER_WIRE_VERSION {
            return Err(format!(
                "peer protocol {version} (frames v{}), this node speaks {PEER_PROTOCOL_VERSION} (frames v{})",
                head[10],
                wire::PEER_WIRE_VERSION
            ));
        }
        let from = i32::from_be_bytes(head[11..15].try_into().expect("4 bytes"));
        let to = i32::from_be_bytes(head[15..19].try_into().expect("4 bytes"));
        let mut id = vec![0u8; usize::from(head[19])];
        let read = tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut id)).await;
        if !matches!(read, Ok(Ok(_))) {
            return Err("the hello ended early".into());
        }
        let cluster_id = String::from_utf8(id).map_err(|_| "a cluster id that is not UTF-8")?;
        Ok(Hello {
            cluster_id,
            from,
            to,
        })
    }

    /// Whether `self` (received) is what node `me` of `cluster_id`, among `voters`, accepts.
    fn check(&self, cluster_id: &str, me: NodeId, voters: &[NodeId]) -> Result<(), String> {
        if self.cluster_id != cluster_id {
            return Err(format!(
                "node {} is of cluster {:?}, this node of {cluster_id:?}",
                self.from, self.cluster_id
            ));
        }
        if self.to != me {
            return Err(format!(
                "node {} meant to reach node {}, this is node {me}",
                self.from, self.to
            ));
        }
        if self.from == me || !voters.contains(&self.from) {
            return Err(format!(
                "node {} is not another node of this cluster (voters {voters:?})",
                self.from
            ));
        }
        Ok(())
    }
}

/// Who this node is among its peers.
#[derive(Debug, Clone)]
pub struct PeerSetup {
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Every voter's id (this node's included).
    pub voters: Vec<NodeId>,
}

/// Accepts links from the peers with lower ids, for as long as the node runs.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    setup: PeerSetup,
    inbound: mpsc::Sender<Event>,
) {
    loop {
        let (mut stream, address) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let setup = setup.clone();
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let hello = match Hello::read(&mut stream).await {
                Ok(hello) => hello,
                Err(reason) => {
                    tracing::warn!(%address, %reason, "peer connection refused");
                    return;
                }
            };
            let checked = hello
                .check(&setup.cluster_id, setup.node_id, &setup.voters)
                .and_then(|()| match hello.from < setup.node_id {
                    true => Ok(()),
                    false => Err(format!(
                        "node {} should wait for this node to dial",
                        hello.from
                    )),
                });
            if let Err(reason) = checked {
                tracing::error!(%address, %reason, "peer refused");
                return;
            }
            let reply = Hello {
                cluster_id: setup.cluster_id.clone(),
                from: setup.node_id,
                to: hello.from,
            };
            // Flushed: a buffered stream (madsim's) sends nothing until then.
            if stream.write_all(&reply.encode()).await.is_err() || stream.flush().await.is_err() {
                return;
            }
            run_link(hello.from, stream, inbound).await;
        });
    }
}

/// Dials `peer` at `address`, again and again, for as long as the node runs.
pub(crate) async fn dial_loop(
    peer: NodeId,
    address: String,
    setup: PeerSetup,
    inbound: mpsc::Sender<Event>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut jitter = (setup.node_id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ peer as u64;
    loop {
        match dial(peer, &address, &setup).await {
            Ok(stream) => {
                tracing::info!(peer, %address, "peer link up");
                backoff = BACKOFF_MIN;
                run_link(peer, stream, inbound.clone()).await;
                tracing::info!(peer, "peer link down");
            }
            Err(reason) => tracing::debug!(peer, %address, %reason, "cannot reach peer"),
        }
        if inbound.is_closed() {
            return;
        }
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        let spread = backoff.as_millis() as u64 / 2 + 1;
        tokio::time::sleep(backoff / 2 + Duration::from_millis(jitter % spread)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn dial(peer: NodeId, address: &str, setup: &PeerSetup) -> Result<TcpStream, String> {
    let mut stream = tokio::time::timeout(HELLO_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let hello = Hello {
        cluster_id: setup.cluster_id.clone(),
        from: setup.node_id,
        to: peer,
    };
    stream
        .write_all(&hello.encode())
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())?;
    let reply = Hello::read(&mut stream).await?;
    if let Err(reason) = reply
        .check(&setup.cluster_id, setup.node_id, &setup.voters)
        .and_then(|()| match reply.from == peer {
            true => Ok(()),
            false => Err(format!(
                "node {} answered at node {peer}'s address",
                reply.from
            )),
        })
    {
        tracing::error!(peer, address, %reason, "peer refused");
        return Err(reason);
    }
    Ok(stream)
}

/// Moves frames both ways on an open link until it fails: frames read go to the owner as
/// they are (the core decodes and checks them); frames the owner queues are written.
async fn run_link(peer: NodeId, stream: TcpStream, inbound: mpsc::Sender<Event>) {
    // Both ends, the accepting one too: with Nagle's algorithm a small frame (a fetch
    // answer, a marker's reply) waits for the ACK of the one before, which the peer delays
    // up to 40 ms (a transaction's commit on three nodes took 47-88 ms instead of 3-7).
    let _ = stream.set_nodelay(true);
    // `io::split` rather than `into_split`: madsim's simulated stream has only the former.
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let (writer, mut frames) = mpsc::channel::<Bytes>(PEER_SEND_QUEUE_FRAMES_MAX);
    let link = next_link_id();
    if inbound
        .send(Event::PeerUp { peer, link, writer })
        .await
        .is_err()
    {
        return;
    }
    let write = async {
        while let Some(frame) = frames.recv().await {
            if write_half.write_all(&frame).await.is_err() || write_half.flush().await.is_err() {
                return;
            }
        }
    };
    let read = async {
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        loop {
            // Whole frames first: each goes to the owner as one event.
            loop {
                match wire::frame_size(&buffer) {
                    Ok(Some(size)) if buffer.len() >= size => {
                        let frame = buffer.split_to(size).freeze();
                        if inbound
                            .send(Event::PeerFrame { peer, frame })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Some(size)) => {
                        buffer.reserve(size - buffer.len());
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(peer, error = %e, "closing a peer link that sent a bad frame");
                        return;
                    }
                }
            }
            match tokio::time::timeout(LINK_SILENCE_MAX, read_half.read_buf(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::warn!(peer, silent = ?LINK_SILENCE_MAX, "closing a peer link that went silent");
                    return;
                }
            }
        }
    };
    // Biased: nothing drawn at random (see the owner's loop in `server.rs`).
    tokio::select! {
        biased;
        () = write => {}
        () = read => {}
    }
    let _ = inbound.send(Event::PeerDown { peer, link }).await;
}

fn next_link_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_is_checked_for_cluster_target_and_membership() {
        let hello = Hello {
            cluster_id: "a".into(),
            from: 1,
            to: 2,
        };
        assert!(hello.check("a", 2, &[1, 2, 3]).is_ok());
        assert!(hello
            .check("b", 2, &[1, 2, 3])
            .unwrap_err()
            .contains("cluster"));
        assert!(hello.check("a", 3, &[1, 2, 3]).is_err());
        assert!(hello.check("a", 2, &[2, 3]).is_err());
        let encoded = hello.encode();
        assert_eq!(&encoded[..8], HELLO_MAGIC);
    }
}
