//! The tokio adapter: sockets, the fsync thread and timers around one `Node`.
//!
//! One task owns the node: no locks around core state. Connection tasks only move bytes: a
//! reader sends what it reads to the owner's inbound channel; a writer writes what the owner
//! hands it. The owner sleeps until the next input or the node's next deadline. Every channel
//! is bounded: a client that does not read its responses fills its own queue and is closed.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use keel_core::disk::DiskError;
use keel_core::node::{ConnId, Input, Instant, Node, Output, RecoveryEvent, SyncToken};
use keel_core::raft::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ServeConfig;
use crate::disk::{RealDisk, SyncJob};

/// Inbound events from connection tasks and the fsync thread.
const INBOUND_QUEUE_EVENTS_MAX: usize = 1024;
/// Responses queued for one connection before it counts as too slow and is closed.
const CONN_SEND_QUEUE_RESPONSES_MAX: usize = 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long a graceful shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub(crate) enum Event {
    Opened {
        conn: ConnId,
        writer: mpsc::Sender<Bytes>,
        reader: JoinHandle<()>,
    },
    Bytes {
        conn: ConnId,
        bytes: Bytes,
    },
    Closed {
        conn: ConnId,
    },
    Synced {
        token: SyncToken,
        result: Result<(), DiskError>,
    },
    /// A link to a peer opened (`link` tells it from a later one to the same peer).
    PeerUp {
        peer: NodeId,
        link: u64,
        writer: mpsc::Sender<Bytes>,
    },
    PeerFrame {
        peer: NodeId,
        frame: Bytes,
    },
    PeerDown {
        peer: NodeId,
        link: u64,
    },
    /// `/metrics` was asked for: the node's snapshot and the adapter's own metrics.
    Scrape {
        reply: tokio::sync::oneshot::Sender<crate::metrics::Scraped>,
    },
}

fn now() -> Instant {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Instant(since_epoch.as_nanos() as u64)
}

struct Connection {
    writer: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
}

/// Runs the broker until SIGTERM or SIGINT (a graceful shutdown: answer what is in flight,
/// sync, exit) or a fatal error.
#[cfg(not(madsim))]
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let signalled = async move {
        tokio::select! {
            biased;
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    };
    serve_until(config, signalled).await
}

/// Runs the broker until `shutdown` completes (a graceful shutdown: hand leaderships over,
/// answer what is in flight, sync, exit; it names the cause in the log) or a fatal error.
/// The process's signals in production; under madsim, the simulated ctrl-c of the test.
pub async fn serve_until(
    config: ServeConfig,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    crate::identity::check(&config.data_dir, &config.cluster_id, config.node_id)?;
    let disk = RealDisk::open(
        &config.data_dir,
        crate::config::descriptors_for_files(crate::config::open_files_max()),
    )?;
    let listener = TcpListener::bind(&config.listen).await?;
    let local: SocketAddr = listener.local_addr()?;
    let node_config = config.node_config(local);
    let (mut node, events) = Node::new(node_config, disk)?;
    for event in events {
        match event {
            RecoveryEvent::Recovered {
                topic,
                partition,
                segments,
                segments_unread,
                batches,
                truncated_bytes,
            } => {
                tracing::info!(%topic, partition, segments, segments_unread, batches, truncated_bytes, "recovered partition");
            }
            RecoveryEvent::Offline {
                topic,
                partition,
                reason,
            } => {
                tracing::error!(%topic, partition, %reason, "partition OFFLINE: it will not be served until repaired");
            }
            RecoveryEvent::Removed { topic } => {
                tracing::warn!(%topic, "no partition of the topic had its id (a creation or deletion cut short by a crash); removed it");
            }
        }
    }
    tracing::info!(listen = %local, data_dir = %config.data_dir.display(), "keel is serving");

    let (inbound, mut events) = mpsc::channel::<Event>(INBOUND_QUEUE_EVENTS_MAX);
    let (sync_jobs, sync_receiver) = mpsc::unbounded_channel::<SyncJob>();
    let fsync_worker = spawn_fsync_worker(sync_receiver, inbound.clone())?;
    let acceptor = tokio::spawn(accept_loop(listener, inbound.clone()));
    let metrics_task = match &config.metrics_listen {
        Some(address) => {
            let metrics_listener = TcpListener::bind(address).await?;
            tracing::info!(metrics_listen = %metrics_listener.local_addr()?, "serving /metrics");
            Some(tokio::spawn(crate::metrics::serve(
                metrics_listener,
                inbound.clone(),
            )))
        }
        None => None,
    };
    let mut peer_tasks = Vec::new();
    let voters = config.voters()?;
    if let Some(peer_listen) = config.peer_listen()? {
        let setup = crate::peers::PeerSetup {
            cluster_id: config.cluster_id.clone(),
            node_id: config.node_id,
            voters: voters.iter().map(|v| v.id).collect(),
        };
        let peer_listener = TcpListener::bind(&peer_listen).await?;
        tracing::info!(peer_listen = %peer_listener.local_addr()?, voters = ?config.voters, "listening for peers");
        peer_tasks.push(tokio::spawn(crate::peers::accept_loop(
            peer_listener,
            setup.clone(),
            inbound.clone(),
        )));
        // The lower id of a pair dials.
        for voter in voters.iter().filter(|v| v.id > config.node_id) {
            peer_tasks.push(tokio::spawn(crate::peers::dial_loop(
                voter.id,
                voter.address(),
                setup.clone(),
                inbound.clone(),
            )));
        }
    }
    drop(inbound);
    // Every open link to each peer, the newest last (frames go on the newest): a second link
    // (a peer's new process, or a stranger claiming its id before its hello is refused
    // elsewhere) must not cut off the first when it ends.
    let mut peer_links: BTreeMap<NodeId, Vec<(u64, mpsc::Sender<Bytes>)>> = BTreeMap::new();

    let mut connections: BTreeMap<ConnId, Connection> = BTreeMap::new();
    let mut out = Vec::new();
    let mut shutdown_deadline: Option<tokio::time::Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);

    let result = loop {
        if shutdown_deadline.is_some() && node.is_shut_down() {
            break Ok(());
        }
        if shutdown_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break Err(anyhow::anyhow!(
                "shutdown did not finish within {SHUTDOWN_GRACE:?}"
            ));
        }
        let sleep_for = node
            .next_deadline()
            .map(|d| Duration::from_nanos(d.0.saturating_sub(now().0)))
            .unwrap_or(Duration::from_secs(3600))
            .min(Duration::from_millis(if shutdown_deadline.is_some() {
                50
            } else {
                60_000
            }));
        // Biased, in this order: a signal is never starved by a busy inbound queue, and
        // nothing here is drawn at random (tokio's draw is seeded per process, so under
        // madsim two runs of a seed in one process would differ). Timers cannot starve:
        // every step, whatever its input, acts on every deadline that passed.
        tokio::select! {
            biased;
            signal = &mut shutdown, if shutdown_deadline.is_none() => {
                tracing::info!(signal, "draining and syncing");
                acceptor.abort();
                shutdown_deadline = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                node.begin_shutdown(now(), &mut out);
            }
            event = events.recv() => {
                let Some(event) = event else { break Ok(()) };
                match event {
                    Event::Opened { conn, writer, reader } => {
                        connections.insert(conn, Connection { writer, reader });
                        node.step(now(), Input::ConnOpened { conn }, &mut out);
                    }
                    Event::Bytes { conn, bytes } => node.step(now(), Input::ConnBytes { conn, bytes: &bytes }, &mut out),
                    Event::Closed { conn } => {
                        connections.remove(&conn);
                        node.step(now(), Input::ConnClosed { conn }, &mut out);
                    }
                    Event::Synced { token, result } => {
                        node.disk_mut().synced(token, result.is_ok());
                        node.step(now(), Input::Synced { token, result }, &mut out);
                    }
                    Event::PeerUp { peer, link, writer } => {
                        peer_links.entry(peer).or_default().push((link, writer));
                    }
                    Event::PeerFrame { peer, frame } => {
                        node.step(now(), Input::PeerMessage { from: peer, bytes: &frame }, &mut out);
                    }
                    Event::PeerDown { peer, link } => {
                        if let Some(links) = peer_links.get_mut(&peer) {
                            links.retain(|(l, _)| *l != link);
                        }
                    }
                    Event::Scrape { reply } => {
                        let _ = reply.send(crate::metrics::Scraped {
                            node: node.metrics(now()),
                            fsync_seconds: node.disk().fsync_seconds().clone(),
                            peer_links_up: peer_links.values().filter(|l| !l.is_empty()).count(),
                        });
                    }
                }
            }
            _ = tokio::time::sleep(sleep_for) => node.step(now(), Input::Timeout, &mut out),
        }
        let mut halted = None;
        let mut too_slow = Vec::new();
        loop {
            for output in out.drain(..) {
                match output {
                    Output::ConnSend { conn, bytes } => {
                        let Some(connection) = connections.get(&conn) else {
                            continue;
                        };
                        if connection.writer.try_send(bytes).is_err() {
                            tracing::warn!(
                                conn,
                                "closing a connection that does not read its responses"
                            );
                            if let Some(c) = connections.remove(&conn) {
                                c.reader.abort();
                            }
                            too_slow.push(conn);
                        }
                    }
                    Output::ConnClose { conn, reason } => {
                        tracing::warn!(conn, %reason, "closing connection");
                        // Dropping the writer lets it flush what is queued, then close.
                        if let Some(c) = connections.remove(&conn) {
                            c.reader.abort();
                        }
                    }
                    Output::Sync { token, file } => {
                        let job = node.disk_mut().sync_job(token, file);
                        if sync_jobs.send(job).is_err() {
                            halted = Some("the fsync thread is gone".to_string());
                        }
                    }
                    Output::Halt { reason } => halted = Some(reason),
                    Output::PeerSend { to, bytes } => {
                        // No link, or a full queue: the frame is dropped, and the peer sees a
                        // gap in the frames' numbers when the next one arrives.
                        if let Some((_, writer)) = peer_links.get(&to).and_then(|l| l.last()) {
                            let _ = writer.try_send(bytes);
                        }
                    }
                }
            }
            if too_slow.is_empty() {
                break;
            }
            for conn in too_slow.drain(..) {
                node.step(now(), Input::ConnClosed { conn }, &mut out);
            }
        }
        if let Some(reason) = halted {
            break Err(anyhow::anyhow!("halted: {reason}"));
        }
    };
    // Nothing reads events any more: close the channel so that the fsync thread, blocked
    // sending a completion, gives up instead of keeping the process alive forever.
    acceptor.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    for task in peer_tasks {
        task.abort();
    }
    drop(peer_links);
    drop(events);
    // Let writers flush what is queued (bounded), then stop.
    let writers: Vec<_> = connections
        .into_values()
        .map(|c| {
            c.reader.abort();
            c.writer
        })
        .collect();
    drop(writers);
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(sync_jobs);
    fsync_worker.finish().await;
    match &result {
        Ok(()) => tracing::info!("shut down cleanly"),
        Err(e) => tracing::error!(error = %e, "stopped"),
    }
    result
}

async fn accept_loop(listener: TcpListener, inbound: mpsc::Sender<Event>) {
    let mut next_conn: ConnId = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_conn += 1;
        let conn = next_conn;
        tracing::debug!(conn, %peer, "connection opened");
        // `io::split` rather than `into_split`: madsim's simulated stream has only the former.
        let (read_half, write_half) = tokio::io::split(stream);
        let (writer, responses) = mpsc::channel(CONN_SEND_QUEUE_RESPONSES_MAX);
        tokio::spawn(write_loop(write_half, responses));
        // The reader starts only after the owner knows the connection (Opened comes first).
        let (start, started) = tokio::sync::oneshot::channel::<()>();
        let reader = tokio::spawn(read_loop(conn, read_half, inbound.clone(), started));
        if inbound
            .send(Event::Opened {
                conn,
                writer,
                reader,
            })
            .await
            .is_err()
        {
            return;
        }
        let _ = start.send(());
    }
}

async fn read_loop(
    conn: ConnId,
    mut socket: ReadHalf<TcpStream>,
    inbound: mpsc::Sender<Event>,
    started: tokio::sync::oneshot::Receiver<()>,
) {
    if started.await.is_err() {
        return;
    }
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    loop {
        match socket.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let bytes = Bytes::copy_from_slice(&buffer[..n]);
                if inbound.send(Event::Bytes { conn, bytes }).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = inbound.send(Event::Closed { conn }).await;
}

async fn write_loop(mut socket: WriteHalf<TcpStream>, mut responses: mpsc::Receiver<Bytes>) {
    while let Some(bytes) = responses.recv().await {
        // Flushed after each answer: a no-op on a kernel socket, but a buffered stream
        // (madsim's) sends nothing until then.
        if socket.write_all(&bytes).await.is_err() || socket.flush().await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Where syncs run: a dedicated thread in production (an fsync can take milliseconds and
/// must not stall the owner); under madsim, which forbids threads, a task of the simulated
/// node (the fsync itself is real and takes no simulated time; the simulated delay before it
/// lets other events interleave with syncs in flight, as they do in production).
struct FsyncWorker {
    #[cfg(not(madsim))]
    thread: std::thread::JoinHandle<()>,
    #[cfg(madsim)]
    task: JoinHandle<()>,
}

impl FsyncWorker {
    async fn finish(self) {
        #[cfg(not(madsim))]
        let _ = self.thread.join();
        #[cfg(madsim)]
        let _ = self.task.await;
    }
}

fn spawn_fsync_worker(
    mut jobs: mpsc::UnboundedReceiver<SyncJob>,
    events: mpsc::Sender<Event>,
) -> std::io::Result<FsyncWorker> {
    #[cfg(not(madsim))]
    {
        let thread = std::thread::Builder::new()
            .name("keel-fsync".into())
            .spawn(move || {
                while let Some(job) = jobs.blocking_recv() {
                    let (token, result) = job.run();
                    if events
                        .blocking_send(Event::Synced { token, result })
                        .is_err()
                    {
                        return;
                    }
                }
            })?;
        Ok(FsyncWorker { thread })
    }
    #[cfg(madsim)]
    {
        let task = tokio::spawn(async move {
            while let Some(job) = jobs.recv().await {
                use madsim::rand::Rng;
                let delay_us = madsim::rand::thread_rng().gen_range(50..2_000);
                tokio::time::sleep(Duration::from_micros(delay_us)).await;
                let (token, result) = job.run();
                if events.send(Event::Synced { token, result }).await.is_err() {
                    return;
                }
            }
        });
        Ok(FsyncWorker { task })
    }
}
