use std::fs;
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use super::*;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn manifest(round: u64, acc: f64) -> Manifest {
    Manifest {
        format: 1,
        round,
        model_round: round,
        next_round: round + 1,
        completed_train_rounds: round,
        suite: "intl".into(),
        config_hash: "abc".into(),
        optimiser: "fedadam".into(),
        optimiser_state: Some(OPTIMISER.into()),
        preprocess: Some(Preprocess {
            mean: vec![1.0],
            std: vec![2.0],
        }),
        tensors: vec![],
        history: vec![RoundRecord {
            round: round + 1,
            success: true,
            accuracy: Some(acc),
            model_round: round,
            ..Default::default()
        }],
        objects: vec![],
        lease_token: None,
    }
}

fn model() -> Result<(Model, Vec<u8>), Box<dyn std::error::Error>> {
    let mut model = Model::new();
    model.insert("weight", Tensor::new(vec![1, 3], vec![0.1, -2.5, 3.75])?);
    let bytes = model.to_safetensors(None)?;
    Ok((model, bytes))
}

/// Five rounds saved with retention 2 (+ best = round 2), then the latest
/// loaded bit-exact and exported: the same body for every backend.
fn roundtrip_and_retention(store: &dyn CheckpointStore, out: &Path) -> TestResult {
    let (model, bytes) = model()?;
    let mut all_history = Vec::new();
    for (r, acc) in [(1u64, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)] {
        let mut m = manifest(r, acc);
        all_history.extend(m.history.clone());
        m.history = all_history.clone();
        store.save(&m, &bytes, Some((&[1.5], &[0.25])))?;
        store.prune(2, best_round(&m.history))?;
    }
    assert_eq!(store.rounds()?, [2, 4, 5]);
    let c = store.latest()?.ok_or("no checkpoint")?;
    assert_eq!(c.manifest.round, 5);
    assert_eq!(c.model_bytes, bytes);
    assert_eq!(c.model, model);
    assert_eq!(c.optimiser, Some((vec![1.5], vec![0.25])));
    assert_eq!(store.load_manifest(2)?.round, 2);
    export(&c, out)?;
    let exported = Model::from_safetensors(&fs::read(out)?)?;
    assert_eq!(
        exported.get("preprocess.std").map(|t| t.data.clone()),
        Some(vec![2.0])
    );
    Ok(())
}

#[test]
fn save_load_roundtrip_is_bit_exact_and_pruning_keeps_the_best() -> TestResult {
    let tmp = tempfile::tempdir()?;
    roundtrip_and_retention(
        &LocalStore::new(tmp.path()),
        &tmp.path().join("x.safetensors"),
    )?;
    // The path-based API sees the same.
    let rounds: Vec<u64> = list(tmp.path())?.into_iter().map(|(r, _)| r).collect();
    assert_eq!(rounds, [2, 4, 5]);
    assert_eq!(latest(tmp.path())?.map(|c| c.manifest.round), Some(5));
    Ok(())
}

#[test]
fn torn_temporary_directories_are_ignored() -> TestResult {
    let tmp = tempfile::tempdir()?;
    fs::create_dir_all(tmp.path().join(".tmp-round-000009"))?;
    fs::create_dir_all(tmp.path().join("round-000010"))?; // no manifest: incomplete
    assert!(latest(tmp.path())?.is_none());
    Ok(())
}

fn in_memory() -> (Arc<InMemory>, ObjectStoreCheckpoints) {
    let mem = Arc::new(InMemory::new());
    let store = ObjectStoreCheckpoints::with_store(mem.clone(), "fed/ck", "mem://fed/ck".into());
    (mem, store)
}

fn put(mem: &InMemory, key: &str, bytes: Vec<u8>) -> Result<(), object_store::Error> {
    futures_block_on(mem.put(&Key::from(key), PutPayload::from(bytes))).map(|_| ())
}

fn get(mem: &InMemory, key: &str) -> Result<Vec<u8>, object_store::Error> {
    futures_block_on(async { Ok(mem.get(&Key::from(key)).await?.bytes().await?.to_vec()) })
}

/// Drive an in-memory store's future (no I/O, so a current-thread runtime will do).
fn futures_block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt.block_on(f),
        Err(e) => panic!("no runtime: {e}"),
    }
}

#[test]
fn object_storage_roundtrip_and_retention() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (mem, store) = in_memory();
    roundtrip_and_retention(&store, &tmp.path().join("x.safetensors"))?;
    // Pruned rounds are gone entirely, data objects included.
    assert!(get(&mem, "fed/ck/round-000001/model.safetensors").is_err());
    assert!(get(&mem, "fed/ck/round-000003/optimiser.safetensors").is_err());
    // The manifest records what was written.
    let m: Manifest = serde_json::from_slice(&get(&mem, "fed/ck/round-000005/manifest.json")?)?;
    let names: Vec<&str> = m.objects.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, [MODEL, OPTIMISER]);
    Ok(())
}

#[test]
fn object_storage_ignores_a_prefix_without_manifest_or_with_a_truncated_object() -> TestResult {
    let (mem, store) = in_memory();
    let (_, bytes) = model()?;
    store.save(&manifest(1, 0.5), &bytes, None)?;
    store.save(&manifest(2, 0.6), &bytes, None)?;
    // Round 3: the data objects arrived, the manifest never did.
    put(&mem, "fed/ck/round-000003/model.safetensors", bytes.clone())?;
    put(
        &mem,
        "fed/ck/round-000003/optimiser.safetensors",
        vec![1; 8],
    )?;
    assert_eq!(store.rounds()?, [1, 2]);
    // Round 2's model loses its tail: listed size ≠ manifest size.
    put(
        &mem,
        "fed/ck/round-000002/model.safetensors",
        bytes[..bytes.len() - 4].to_vec(),
    )?;
    assert_eq!(store.rounds()?, [1]);
    assert_eq!(store.latest()?.map(|c| c.manifest.round), Some(1));
    let e = store
        .load(2)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("incomplete or damaged"), "{e}");
    // Same size, other bytes: the listing cannot tell, the SHA-256 can, and
    // resume falls back to the newest checkpoint that verifies.
    let mut flipped = bytes.clone();
    if let Some(b) = flipped.last_mut() {
        *b ^= 1;
    }
    put(&mem, "fed/ck/round-000002/model.safetensors", flipped)?;
    assert_eq!(store.rounds()?, [1, 2]);
    assert_eq!(store.latest()?.map(|c| c.manifest.round), Some(1));
    // Pruning after a newer save sweeps the debris of round 3 below it.
    store.save(&manifest(4, 0.7), &bytes, None)?;
    store.prune(3, None)?;
    assert!(get(&mem, "fed/ck/round-000003/model.safetensors").is_err());
    Ok(())
}

#[test]
fn a_manifest_of_the_local_format_needs_its_files_present() -> TestResult {
    let (mem, store) = in_memory();
    let (_, bytes) = model()?;
    // As `aws s3 sync` of a local checkpoint directory would leave it.
    let m = manifest(7, 0.5);
    put(
        &mem,
        "fed/ck/round-000007/manifest.json",
        serde_json::to_vec(&m)?,
    )?;
    put(&mem, "fed/ck/round-000007/model.safetensors", bytes.clone())?;
    assert!(store.rounds()?.is_empty(), "optimiser state missing");
    put(
        &mem,
        "fed/ck/round-000007/optimiser.safetensors",
        optimiser_file(&[1.0], &[2.0])?,
    )?;
    assert_eq!(store.rounds()?, [7]);
    assert_eq!(store.latest()?.map(|c| c.model_bytes), Some(bytes));
    Ok(())
}

#[test]
fn locations_parse() -> TestResult {
    assert_eq!(
        Location::parse("s3://my-bucket/fed/a/")?,
        Location::Object {
            bucket: "my-bucket".into(),
            prefix: "fed/a".into()
        }
    );
    assert_eq!(
        Location::parse("s3://my-bucket")?.to_string(),
        "s3://my-bucket"
    );
    assert_eq!(Location::parse("ck/dir")?, Location::Dir("ck/dir".into()));
    for bad in ["s3://", "s3://UPPER/x", "gs://b/p", "file:///tmp"] {
        assert!(Location::parse(bad).is_err(), "{bad}");
    }
    Ok(())
}

#[test]
fn object_storage_large_objects_go_up_in_parts_and_come_back_in_ranges_bit_exact() -> TestResult {
    let (_, store) = in_memory();
    // 12 MB of model and 24 MB of optimiser state: above the 8 MiB threshold.
    let n = 3_000_000;
    let mut model = Model::new();
    model.insert(
        "w",
        Tensor::new(vec![n], (0..n).map(|i| i as f32).collect())?,
    );
    let bytes = model.to_safetensors(None)?;
    let (m, v) = (vec![0.5f32; n], vec![0.25f32; n]);
    store.save(&manifest(1, 0.5), &bytes, Some((&m, &v)))?;
    let c = store.load(1)?;
    assert_eq!(c.model_bytes, bytes);
    assert_eq!(c.optimiser, Some((m, v)));
    Ok(())
}

#[test]
fn feature_statistics_survive_the_manifest_bit_for_bit() -> Result<(), Box<dyn std::error::Error>> {
    // Values whose shortest decimal form the default float parser reads
    // back one ulp off; a resumed coordinator must announce exactly what
    // its predecessor did.
    let mean: Vec<f64> = (1..200)
        .map(|i| (i as f64).sqrt() * 14.127_291_739_894_552 / 3.0)
        .collect();
    let mut m = manifest(1, 0.5);
    m.preprocess = Some(Preprocess {
        mean: mean.clone(),
        std: mean.iter().map(|x| 1.0 / x).collect(),
    });
    let back: Manifest = serde_json::from_slice(&serde_json::to_vec_pretty(&m)?)?;
    let p = back.preprocess.ok_or("no statistics")?;
    assert!(
        p.mean
            .iter()
            .zip(&mean)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
    Ok(())
}
