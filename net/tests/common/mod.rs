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
            .env("RUST_LOG", "info")
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
    let voters: Vec<String> = (1..=n)
        .map(|id| format!("{id}@127.0.0.1:{}", free_port()))
        .collect();
    let voters = voters.join(",");
    (1..=n)
        .map(|id| {
            let args = ["--node-id", &id.to_string(), "--voters", &voters].map(String::from);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Broker::start(&dir.join(format!("node-{id}")), &args)
        })
        .collect()
}
