//! A real `confide serve` process against SeaweedFS, killed on drop.

use std::path::Path;
use std::process::{Child, Command};

use super::seaweed::{BoxError, Seaweed};

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `confide serve --insecure` on `listen` with `cfg`, reaching `s3`, with
/// nothing of the test's own `CONFIDE_*`/`AWS_*` environment but `env`;
/// its output appended to `log`.
pub fn serve(
    s3: &Seaweed,
    cfg: &Path,
    listen: &str,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<KillOnDrop, BoxError> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confide"));
    c.args(["serve", "--insecure", "--listen", listen, "--config"])
        .arg(cfg);
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFIDE_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.envs(s3.env())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied());
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Ok(KillOnDrop(c.stdout(log.try_clone()?).stderr(log).spawn()?))
}
