//! A real `keel` process on loopback, for black-box tests.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Broker {
    pub addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
    log_path: PathBuf,
    args: Vec<String>,
    /// Run under this open-file limit (soft and hard), if set.
    open_files: Option<u64>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh, empty directory under the target directory's tmp space.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Broker {
    pub fn start(data_dir: &Path, args: &[&str]) -> Broker {
        let mut broker = Broker {
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            child: None,
            log_path: data_dir.with_extension("log"),
            args: args.iter().map(|a| a.to_string()).collect(),
            open_files: None,
        };
        broker.spawn();
        broker
    }

    /// A broker whose process may open at most `open_files` files.
    pub fn start_with_open_files(data_dir: &Path, open_files: u64) -> Broker {
        let mut broker = Broker {
            addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            child: None,
            log_path: data_dir.with_extension("log"),
            args: Vec::new(),
            open_files: Some(open_files),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = match self.open_files {
            // `ulimit -n` in the shell sets both limits; `exec` keeps the pid for signals.
            Some(limit) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_keel"),
                ]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_keel")),
        };
        let child = command
            .args(["serve", "--listen", &self.addr, "--data-dir"])
            .arg(&self.data_dir)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("KEEL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("keel starts");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "keel did not start listening: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// SIGKILL: no draining, no final sync.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "keel did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `n` nodes of one cluster on loopback (node ids 1..=n), each with its peer listener and
/// every node as a voter, started in turn: node `i` is `nodes[i - 1]`.
pub fn start_cluster(dir: &Path, n: i32) -> Vec<Broker> {
    start_cluster_with_peers(dir, n).0
}

/// As [`start_cluster`], with each node's peer address (node `i` at index `i - 1`).
pub fn start_cluster_with_peers(dir: &Path, n: i32) -> (Vec<Broker>, Vec<String>) {
    start_cluster_with_peers_and_args(dir, n, &[])
}

/// As [`start_cluster`], every node given `extra` flags too.
pub fn start_cluster_with_args(dir: &Path, n: i32, extra: &[&str]) -> Vec<Broker> {
    start_cluster_with_peers_and_args(dir, n, extra).0
}

fn start_cluster_with_peers_and_args(
    dir: &Path,
    n: i32,
    extra: &[&str],
) -> (Vec<Broker>, Vec<String>) {
    let peers: Vec<String> = (1..=n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let voters: Vec<String> = (peers.iter().enumerate())
        .map(|(i, address)| format!("{}@{address}", i + 1))
        .collect();
    let voters = voters.join(",");
    let nodes = (1..=n)
        .map(|id| {
            let args = ["--node-id", &id.to_string(), "--voters", &voters].map(String::from);
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend_from_slice(extra);
            Broker::start(&dir.join(format!("node-{id}")), &args)
        })
        .collect();
    (nodes, peers)
}

/// A TCP proxy on loopback that can be cut: every connection through it is closed and new
/// ones are refused until it heals. It stands on a peer link to cut a node off its peers.
pub struct Proxy {
    pub addr: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Streams open through the proxy, to shut when it is cut.
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// Forwards connections on a free port to `upstream`.
    pub fn start(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut open = open2.lock().unwrap();
                open.push(client);
                open.push(server);
            }
        });
        Proxy { addr, cut, open }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Three nodes whose peer links all pass through proxies, one per node pair, so that a node
/// can be cut off from its peers while clients still reach it. Returns the nodes and the
/// proxies by pair (lower id, higher id).
pub fn start_cluster_behind_proxies(
    dir: &Path,
) -> (Vec<Broker>, std::collections::BTreeMap<(i32, i32), Proxy>) {
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut proxies = std::collections::BTreeMap::new();
    for low in 1..=3 {
        for high in low + 1..=3 {
            // The lower id dials the higher: the proxy leads to the higher's listener.
            let upstream = format!("127.0.0.1:{}", peer_ports[high as usize - 1]);
            proxies.insert((low, high), Proxy::start(upstream));
        }
    }
    let nodes = (1..=3)
        .map(|id: i32| {
            // Each node reaches each peer through the pair's proxy; its own entry is where it
            // listens.
            let voters: Vec<String> = (1..=3)
                .map(|other: i32| {
                    let addr = match other == id {
                        true => format!("127.0.0.1:{}", peer_ports[id as usize - 1]),
                        false => proxies[&(id.min(other), id.max(other))].addr.clone(),
                    };
                    format!("{other}@{addr}")
                })
                .collect();
            let args =
                ["--node-id", &id.to_string(), "--voters", &voters.join(",")].map(String::from);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Broker::start(&dir.join(format!("node-{id}")), &args)
        })
        .collect();
    (nodes, proxies)
}
