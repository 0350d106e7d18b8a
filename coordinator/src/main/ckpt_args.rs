//! `confide checkpoints …`: the arguments of list, export and rewrap
//! (dispatched here; the work is the library's `cli` and `checkpoint`
//! modules). Key-encryption keys come from a file or an environment
//! variable, never from the command line itself.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use confide_coordinator::checkpoint;
use confide_coordinator::cli::{self, checkpoints::KeyFlags, render};

/// The KEK that opens encrypted checkpoints.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct KeyArgs {
    /// Id of the key-encryption key (checkpoints.encryption.key_id).
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
    /// File holding the KEK as 64 hex digits (mode 0600).
    #[arg(long, value_name = "FILE", conflicts_with = "key_env")]
    key_file: Option<PathBuf>,
    /// Environment variable holding the KEK as 64 hex digits.
    #[arg(long, value_name = "VAR")]
    key_env: Option<String>,
}

impl From<&KeyArgs> for KeyFlags {
    fn from(a: &KeyArgs) -> Self {
        KeyFlags {
            key_id: a.key_id.clone(),
            key_file: a.key_file.clone(),
            key_env: a.key_env.clone(),
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum CkptCmd {
    /// List the complete checkpoints (with a key: their manifests authenticated).
    List {
        /// A directory, or s3://bucket/prefix (endpoint and credentials from AWS_*).
        #[arg(long, value_name = "DIR|URL", default_value = "checkpoints")]
        dir: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Export one checkpoint (default: latest) as a single safetensors file with preprocessing tensors.
    Export {
        /// A directory, or s3://bucket/prefix (endpoint and credentials from AWS_*).
        #[arg(long, value_name = "DIR|URL", default_value = "checkpoints")]
        dir: String,
        #[arg(long)]
        round: Option<u64>,
        #[arg(long)]
        out: PathBuf,
        /// Decrypt an encrypted checkpoint with the KEK of --key-id and
        /// --key-file / --key-env; the file written is plain safetensors.
        #[arg(long, requires = "key_id")]
        decrypt: bool,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Rotate the key-encryption key: re-wrap every checkpoint's data key
    /// from the old KEK to the new one, rewriting only manifests (each
    /// atomically), never the model objects. Safe to run again.
    Rewrap {
        /// A directory, or s3://bucket/prefix (endpoint and credentials from AWS_*).
        #[arg(long, value_name = "DIR|URL", default_value = "checkpoints")]
        dir: String,
        /// Id of the current KEK.
        #[arg(long, value_name = "ID")]
        old_key_id: String,
        /// File holding the current KEK.
        #[arg(long, value_name = "FILE", conflicts_with = "old_key_env")]
        old_key_file: Option<PathBuf>,
        /// Environment variable holding the current KEK.
        #[arg(long, value_name = "VAR")]
        old_key_env: Option<String>,
        /// Id of the new KEK (then set checkpoints.encryption.key_id to it).
        #[arg(long, value_name = "ID")]
        new_key_id: String,
        /// File holding the new KEK.
        #[arg(long, value_name = "FILE", conflicts_with = "new_key_env")]
        new_key_file: Option<PathBuf>,
        /// Environment variable holding the new KEK.
        #[arg(long, value_name = "VAR")]
        new_key_env: Option<String>,
    },
}

/// Run `confide checkpoints …`.
pub(crate) fn run(cmd: CkptCmd) -> Result<()> {
    match cmd {
        CkptCmd::List { dir, key } => {
            let store = cli::checkpoints::open_store(&dir, KeyFlags::from(&key).load("--key")?)?;
            let list = confide_coordinator::checkpoint_infos_in(store.as_ref())?;
            print!("{}", render::checkpoints_table(&list));
        }
        CkptCmd::Export {
            dir,
            round,
            out,
            decrypt,
            key,
        } => {
            let kek = if decrypt {
                KeyFlags::from(&key).load("--key")?
            } else {
                None
            };
            let store = cli::checkpoints::open_store(&dir, kek)?;
            let round = cli::find_checkpoint(store.as_ref(), round)?
                .with_context(|| format!("no such complete checkpoint in {dir}"))?;
            let c = store
                .load(round)
                .with_context(|| match decrypt {
                    false => "if it is encrypted, pass --decrypt --key-id ID --key-file FILE (or --key-env VAR)",
                    true => "could not open it with that key",
                })?;
            checkpoint::export(&c, &out)?;
            println!("exported {} to {}", c.path.display(), out.display());
        }
        CkptCmd::Rewrap {
            dir,
            old_key_id,
            old_key_file,
            old_key_env,
            new_key_id,
            new_key_file,
            new_key_env,
        } => {
            let flags = |key_id: String, key_file, key_env| KeyFlags {
                key_id: Some(key_id),
                key_file,
                key_env,
            };
            let old = flags(old_key_id, old_key_file, old_key_env)
                .load("--old-key")?
                .context("no old key")?;
            let new = flags(new_key_id.clone(), new_key_file, new_key_env)
                .load("--new-key")?
                .context("no new key")?;
            let store = cli::checkpoints::open_store(&dir, None)?;
            let report = cli::checkpoints::rewrap_all(store.as_ref(), old, new.as_ref())?;
            print!(
                "{}",
                cli::checkpoints::render_rewrap(&report, &dir, &new_key_id)
            );
        }
    }
    Ok(())
}
