//! Encryption at rest against both backends (a local directory and a real
//! S3 server, SeaweedFS) and both suites: encrypted checkpoints written by
//! the real stores cannot be read without the key (the error names the key
//! id); a flipped byte in a data object or the manifest, or a manifest
//! swapped in from another round, is refused — by `load`, by `latest` (which
//! must not fall back to older state) and by `Federation::new`; `confide
//! checkpoints export --decrypt` gives the original tensors; `confide
//! checkpoints rewrap` moves every checkpoint to a new KEK without touching
//! the model objects. Timings (ignored by default) for docs/performance.md.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use confide_coordinator::checkpoint::{
    self, CheckpointStore, KeySource, LocalKek, LocalStore, Manifest, Preprocess, RoundRecord,
    Sealing,
};
use confide_coordinator::error::CoordinatorError;
use confide_coordinator::{Federation, Settings};
use confide_crypto::Suite;
use confide_proto::model::{Model, Tensor};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use support::seaweed::{BoxError, Seaweed};

const KEY_ID: &str = "kek-2026-01";

/// A KEK file (64 hex digits, mode 0600) of `byte` repeated.
fn kek_file(dir: &Path, name: &str, byte: u8) -> Result<PathBuf, BoxError> {
    let p = dir.join(name);
    std::fs::write(&p, hex::encode([byte; 32]) + "\n")?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(p)
}

fn sealing(id: &str, file: &Path) -> Result<Sealing, BoxError> {
    let kek = LocalKek::load(id, &KeySource::File(file.to_path_buf()))?;
    Ok(Sealing::with_key(Arc::new(kek)))
}

fn manifest(suite: Suite, round: u64, history: &mut Vec<RoundRecord>) -> Manifest {
    history.push(RoundRecord {
        round: round + 1,
        kind: "train".into(),
        success: true,
        accuracy: Some(0.5 + round as f64 / 100.0),
        model_round: round,
        ..Default::default()
    });
    Manifest {
        format: 1,
        round,
        model_round: round,
        next_round: round + 1,
        completed_train_rounds: round,
        suite: suite.name().into(),
        config_hash: "test".into(),
        optimiser: "fedadam".into(),
        optimiser_state: Some(checkpoint::OPTIMISER.into()),
        preprocess: Some(Preprocess {
            mean: vec![1.0, 2.0],
            std: vec![3.0, 4.0],
        }),
        tensors: vec![("weight".into(), vec![1, 1500])],
        history: history.clone(),
        objects: vec![],
        lease_token: None,
    }
}

fn model(round: u64) -> Result<Model, BoxError> {
    let mut m = Model::new();
    m.insert(
        "weight",
        Tensor::new(
            vec![1, 1500],
            (0..1500).map(|i| i as f32 * 0.25 - round as f32).collect(),
        )?,
    );
    Ok(m)
}

/// `confide ARGS` with the store's environment (and nothing CONFIDE_*).
fn confide(args: &[&str], env: &[(&'static str, String)]) -> Result<String, String> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confide"));
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFIDE_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let out = c.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Raw bytes of a checkpoint file, under either backend.
trait Raw {
    fn read(&self, round: u64, file: &str) -> Result<Vec<u8>, BoxError>;
    fn write(&self, round: u64, file: &str, bytes: Vec<u8>) -> Result<(), BoxError>;
}

struct Dir(PathBuf);

impl Raw for Dir {
    fn read(&self, round: u64, file: &str) -> Result<Vec<u8>, BoxError> {
        Ok(std::fs::read(
            self.0.join(checkpoint::round_dir_name(round)).join(file),
        )?)
    }
    fn write(&self, round: u64, file: &str, bytes: Vec<u8>) -> Result<(), BoxError> {
        let p = self.0.join(checkpoint::round_dir_name(round)).join(file);
        Ok(std::fs::write(p, bytes)?)
    }
}

struct Bucket {
    raw: object_store::aws::AmazonS3,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl Bucket {
    fn key(&self, round: u64, file: &str) -> Key {
        Key::from(format!(
            "{}/{}/{file}",
            self.prefix,
            checkpoint::round_dir_name(round)
        ))
    }
}

impl Raw for Bucket {
    fn read(&self, round: u64, file: &str) -> Result<Vec<u8>, BoxError> {
        let k = self.key(round, file);
        Ok(self
            .rt
            .block_on(async { self.raw.get(&k).await?.bytes().await })?
            .to_vec())
    }
    fn write(&self, round: u64, file: &str, bytes: Vec<u8>) -> Result<(), BoxError> {
        let k = self.key(round, file);
        self.rt
            .block_on(self.raw.put(&k, PutPayload::from(bytes)))?;
        Ok(())
    }
}

fn expect_err<T: std::fmt::Debug>(
    r: Result<T, CoordinatorError>,
    what: &str,
    check: impl Fn(&CoordinatorError) -> bool,
) -> Result<String, BoxError> {
    match r {
        Err(e) if check(&e) => Ok(e.to_string()),
        other => Err(format!("{what}: unexpected {other:?}").into()),
    }
}

fn tampered(e: &CoordinatorError) -> bool {
    matches!(e, CoordinatorError::TamperedCheckpoint { .. })
}

/// One body for every backend and suite. `open` makes a store on the
/// same location with the given sealing.
fn encrypted_checkpoints(
    suite: Suite,
    open: &dyn Fn(Sealing) -> Result<Arc<dyn CheckpointStore>, BoxError>,
    raw: &dyn Raw,
    location: &str,
    env: &[(&'static str, String)],
    tmp: &Path,
) -> Result<(), BoxError> {
    let (k1, k2) = (kek_file(tmp, "k1.hex", 1)?, kek_file(tmp, "k2.hex", 2)?);
    let store = open(sealing(KEY_ID, &k1)?)?;
    let mut history = Vec::new();
    for r in 1..=3 {
        let n = 1500;
        let (m, v) = (vec![r as f32; n], vec![0.125; n]);
        store.save(
            &manifest(suite, r, &mut history),
            &model(r)?.to_safetensors(None)?,
            Some((&m, &v)),
        )?;
    }
    // With the key: bit-exact.
    let c = store.latest()?.ok_or("no checkpoint")?;
    assert_eq!((c.manifest.round, &c.model), (3, &model(3)?));
    assert_eq!(c.optimiser, Some((vec![3.0; 1500], vec![0.125; 1500])));
    // At rest: no plaintext tensor bytes, and the manifest names the suite's AEAD.
    let stored = raw.read(3, checkpoint::MODEL)?;
    let plain = model(3)?.to_safetensors(None)?;
    assert!(!stored.windows(64).any(|w| w == &plain[plain.len() - 64..]));
    let text = String::from_utf8(raw.read(3, checkpoint::MANIFEST)?)?;
    let aead = if suite == Suite::Intl {
        "AES-256-GCM"
    } else {
        "SM4-GCM"
    };
    assert!(text.contains(aead) && text.contains(KEY_ID), "{text}");

    // Without the key: listing works, reading the data names the key id.
    let keyless = open(Sealing::none())?;
    assert_eq!(keyless.rounds()?, [1, 2, 3]);
    let e = expect_err(
        keyless.load(3),
        "no key",
        |e| matches!(e, CoordinatorError::CheckpointKey { key_id, .. } if key_id == KEY_ID),
    )?;
    assert!(e.contains("no key-encryption key"), "{e}");
    let e = expect_err(keyless.latest(), "no key (latest)", |e| {
        matches!(e, CoordinatorError::CheckpointKey { .. })
    })?;
    assert!(e.contains(KEY_ID), "{e}");
    let wrong = open(sealing(KEY_ID, &k2)?)?;
    expect_err(wrong.load(3), "wrong KEK", |e| {
        matches!(e, CoordinatorError::CheckpointKey { .. })
    })?;

    // Export: refused without --decrypt, plain safetensors with it.
    let out = tmp.join("export.safetensors");
    let out_s = out.to_str().ok_or("non-UTF-8 path")?;
    let k1_s = k1.to_str().ok_or("non-UTF-8 path")?;
    let export = [
        "checkpoints",
        "export",
        "--dir",
        location,
        "--round",
        "2",
        "--out",
        out_s,
    ];
    let e = confide(&export, env)
        .err()
        .ok_or("export without the key worked")?;
    assert!(e.contains(KEY_ID) && e.contains("--decrypt"), "{e}");
    let with_key = [
        &export[..],
        &["--decrypt", "--key-id", KEY_ID, "--key-file", k1_s],
    ]
    .concat();
    confide(&with_key, env)?;
    let exported = Model::from_safetensors(&std::fs::read(&out)?)?;
    assert_eq!(exported.get("weight"), model(2)?.get("weight"));
    assert_eq!(
        exported.get("preprocess.std").map(|t| t.data.clone()),
        Some(vec![3.0, 4.0])
    );

    // A flipped byte in the model object: refused, and latest does not
    // fall back to round 2.
    let good = raw.read(3, checkpoint::MODEL)?;
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x04;
    raw.write(3, checkpoint::MODEL, bad)?;
    let e = expect_err(store.load(3), "flipped model byte", tampered)?;
    assert!(e.contains(checkpoint::MODEL), "{e}");
    expect_err(store.latest(), "flipped model byte (latest)", tampered)?;
    raw.write(3, checkpoint::MODEL, good)?;
    assert_eq!(store.latest()?.map(|c| c.manifest.round), Some(3));

    // A flipped byte in the manifest (inside a value, so it still parses).
    let good = raw.read(3, checkpoint::MANIFEST)?;
    let at = text.find("\"next_round\": 4").ok_or("no next_round")? + "\"next_round\": ".len();
    let mut bad = good.clone();
    bad[at] = b'9';
    raw.write(3, checkpoint::MANIFEST, bad)?;
    let e = expect_err(store.load(3), "flipped manifest byte", tampered)?;
    assert!(e.contains("MAC"), "{e}");
    expect_err(store.latest(), "flipped manifest byte (latest)", tampered)?;
    raw.write(3, checkpoint::MANIFEST, good)?;

    // Round 2's manifest (and then its whole checkpoint) put in round 3's place.
    let three = raw.read(3, checkpoint::MANIFEST)?;
    raw.write(3, checkpoint::MANIFEST, raw.read(2, checkpoint::MANIFEST)?)?;
    let e = expect_err(store.latest(), "swapped manifest", tampered)?;
    assert!(e.contains("round 2"), "{e}");
    for f in [checkpoint::MODEL, checkpoint::OPTIMISER] {
        raw.write(3, f, raw.read(2, f)?)?;
    }
    let e = expect_err(store.latest(), "swapped checkpoint", tampered)?;
    assert!(e.contains("round 2"), "{e}");
    raw.write(3, checkpoint::MANIFEST, three)?;
    expect_err(
        store.latest(),
        "round 3 manifest over round 2 objects",
        tampered,
    )?;
    // Round 3 saved again: whole and loadable.
    let (m, v) = (vec![3.0f32; 1500], vec![0.125f32; 1500]);
    let mut h = history[..2].to_vec();
    store.save(
        &manifest(suite, 3, &mut h),
        &model(3)?.to_safetensors(None)?,
        Some((&m, &v)),
    )?;
    assert_eq!(store.latest()?.map(|c| c.model), Some(model(3)?));

    // KEK rotation through the binary: only manifests change.
    let before = raw.read(2, checkpoint::MODEL)?;
    let k2_s = k2.to_str().ok_or("non-UTF-8 path")?;
    let rewrap = [
        "checkpoints",
        "rewrap",
        "--dir",
        location,
        "--old-key-id",
        KEY_ID,
        "--old-key-file",
        k1_s,
        "--new-key-id",
        "kek-2026-02",
        "--new-key-file",
        k2_s,
    ];
    let said = confide(&rewrap, env)?;
    assert!(said.contains("3 of 3 checkpoints"), "{said}");
    assert!(
        confide(&rewrap, env)?.contains("0 of 3"),
        "a second run rewrote something"
    );
    assert_eq!(raw.read(2, checkpoint::MODEL)?, before);
    let rotated = open(sealing("kek-2026-02", &k2)?)?;
    assert_eq!(rotated.load(2)?.model, model(2)?);
    assert_eq!(rotated.latest()?.map(|c| c.manifest.round), Some(3));
    let e = expect_err(
        store.load(2),
        "old key after rotation",
        |e| matches!(e, CoordinatorError::CheckpointKey { key_id, .. } if key_id == "kek-2026-02"),
    )?;
    assert!(e.contains(KEY_ID), "{e}");
    Ok(())
}

#[test]
fn local_directory_encrypted_checkpoints_both_suites() -> Result<(), BoxError> {
    for suite in Suite::ALL {
        let tmp = tempfile::tempdir()?;
        let ck = tmp.path().join("ck");
        let open = |s: Sealing| -> Result<Arc<dyn CheckpointStore>, BoxError> {
            Ok(Arc::new(LocalStore::new(&ck).with_sealing(s)))
        };
        let loc = ck.to_str().ok_or("non-UTF-8 path")?;
        encrypted_checkpoints(suite, &open, &Dir(ck.clone()), loc, &[], tmp.path())?;
    }
    Ok(())
}

#[test]
fn seaweedfs_encrypted_checkpoints_both_suites() -> Result<(), BoxError> {
    let Some(s3) = Seaweed::start("seaweedfs_encrypted_checkpoints_both_suites")? else {
        return Ok(());
    };
    for suite in Suite::ALL {
        let tmp = tempfile::tempdir()?;
        let prefix = format!("fed/enc-{suite}");
        let open = |s: Sealing| -> Result<Arc<dyn CheckpointStore>, BoxError> {
            Ok(Arc::new(s3.store(&prefix)?.with_sealing(s)))
        };
        let raw = Bucket {
            raw: s3.raw()?,
            prefix: prefix.clone(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        };
        encrypted_checkpoints(suite, &open, &raw, &s3.url(&prefix), &s3.env(), tmp.path())?;
    }
    Ok(())
}

/// Resume itself: `Federation::new` stops on an encrypted checkpoint it has
/// no key for, and on a tampered one, rather than start from older state.
#[test]
fn federation_new_refuses_without_the_key_and_after_tampering() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let ck = tmp.path().join("ck");
    let k1 = kek_file(tmp.path(), "k1.hex", 1)?;
    let store = LocalStore::new(&ck).with_sealing(sealing(KEY_ID, &k1)?);
    let mut history = Vec::new();
    for r in 1..=2 {
        store.save(
            &manifest(Suite::Intl, r, &mut history),
            &model(r)?.to_safetensors(None)?,
            None,
        )?;
    }
    let mut settings = Settings::default();
    settings.tls.insecure = true;
    settings.checkpoints.dir = Some(ck.clone());
    let e = expect_err(
        Federation::new(settings.clone()).map(|_| ()),
        "no key",
        |e| matches!(e, CoordinatorError::CheckpointKey { .. }),
    )?;
    assert!(e.contains(KEY_ID), "{e}");
    settings.checkpoints.encryption = Some(confide_coordinator::settings::EncryptionSettings {
        key_id: KEY_ID.into(),
        key_file: Some(k1.clone()),
        ..Default::default()
    });
    let raw = Dir(ck);
    let mut model_obj = raw.read(2, checkpoint::MODEL)?;
    model_obj[10] ^= 1;
    raw.write(2, checkpoint::MODEL, model_obj)?;
    expect_err(
        Federation::new(settings.clone()).map(|_| ()),
        "tampered",
        tampered,
    )?;
    // A KEK file others can read is refused before anything is read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k1, std::fs::Permissions::from_mode(0o644))?;
        let e = expect_err(Federation::new(settings).map(|_| ()), "exposed KEK", |e| {
            matches!(e, CoordinatorError::Config(_))
        })?;
        assert!(e.contains("k1.hex"), "{e}");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Encrypted checkpoint write (save) and read (load: unwrap, MAC, digests,
/// every segment) time, median of three, for 10⁶ parameters (and 10⁸ with
/// CONFIDE_BENCH_1E8=1), FedAdam state included (12 bytes per parameter),
/// both suites and both backends. Run with
/// `cargo test -p confide-coordinator --test checkpoint_encryption -- --ignored --nocapture`.
#[test]
#[ignore = "timing, run by hand"]
fn encrypted_checkpoint_write_read_timings() -> Result<(), BoxError> {
    let s3 = Seaweed::start("encrypted_checkpoint_write_read_timings")?.ok_or("no weed")?;
    let tmp = tempfile::tempdir()?;
    let k1 = kek_file(tmp.path(), "k1.hex", 1)?;
    let mut sizes = vec![1_000_000usize];
    if std::env::var_os("CONFIDE_BENCH_1E8").is_some() {
        sizes.push(100_000_000);
    }
    for n in sizes {
        let mut m = Model::new();
        m.insert(
            "w",
            Tensor::new(vec![n], (0..n).map(|i| i as f32).collect())?,
        );
        let bytes = m.to_safetensors(None)?;
        drop(m);
        let (mv, vv) = (vec![0.5f32; n], vec![0.25f32; n]);
        for suite in Suite::ALL {
            let local: Arc<dyn CheckpointStore> = Arc::new(
                LocalStore::new(tmp.path().join(format!("ck-{n}-{suite}")))
                    .with_sealing(sealing(KEY_ID, &k1)?),
            );
            let object: Arc<dyn CheckpointStore> = Arc::new(
                s3.store(&format!("bench/{n}-{suite}"))?
                    .with_sealing(sealing(KEY_ID, &k1)?),
            );
            for (name, store) in [("local", local), ("seaweedfs", object)] {
                let (mut w, mut r) = (Vec::new(), Vec::new());
                for i in 0..3u64 {
                    let mut h = Vec::new();
                    let man = manifest(suite, i + 1, &mut h);
                    let t = Instant::now();
                    store.save(&man, &bytes, Some((&mv, &vv)))?;
                    w.push(t.elapsed().as_secs_f64());
                    let t = Instant::now();
                    let c = store.load(i + 1)?;
                    r.push(t.elapsed().as_secs_f64());
                    assert_eq!(c.model_bytes.len(), bytes.len());
                    drop(c);
                    store.delete(i + 1)?;
                }
                println!(
                    "{suite:>4} {name:>9} {n:>11} params encrypted: write {:.3} s, read {:.3} s \
                     (median of 3; {} MB)",
                    median(w),
                    median(r),
                    (bytes.len() + 8 * n) / 1_000_000
                );
            }
        }
    }
    Ok(())
}
