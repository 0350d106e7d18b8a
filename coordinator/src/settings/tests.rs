use confide_proto::model::ModelKind;

use super::*;

#[test]
fn example_file_parses_and_validates() -> Result<(), CoordinatorError> {
    let text = include_str!("../../federation.example.toml");
    let mut s = Settings::from_toml_str(text)?;
    assert_eq!(s.model.features, 30);
    assert_eq!(s.rounds, 30);
    assert_eq!(s.optimiser.kind, OptimiserKind::FedAvg);
    s.tls.insecure = true;
    s.validate()?;
    Ok(())
}

#[test]
fn refuses_bad_configs() {
    let mut s = Settings {
        tls: TlsSettings {
            insecure: true,
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(s.validate().is_ok());
    s.min_sites = 1;
    assert!(s.validate().is_err());
    // Two sites: fine for the plaintext comparison mode, not for secure
    // aggregation (each would learn the other's update from the sum).
    s.min_sites = 2;
    assert!(
        s.validate()
            .is_err_and(|e| e.to_string().contains("at least 3"))
    );
    s.secure_aggregation = false;
    assert!(s.validate().is_ok());
    s.secure_aggregation = true;
    s.min_sites = 3;
    s.quantisation.max_weight = u64::MAX / 2;
    assert!(s.validate().is_err(), "quantiser overflow must be refused");
    s.quantisation.max_weight = 100;
    s.secagg.k = Some(2);
    s.secagg.t = Some(1);
    assert!(s.validate().is_err(), "t <= k/2 must be refused");
    // A fixed degree that is not the complete graph for a small cohort, or a
    // threshold below the collusion bound, is refused before any round.
    s.secagg.k = Some(2);
    s.secagg.t = Some(2);
    s.min_sites = 4;
    s.cohort_size = Some(4);
    assert!(s.validate().is_err(), "k = 2 in a cohort of 4");
    s.secagg.k = Some(3);
    s.secagg.t = Some(2);
    assert!(s.validate().is_err(), "t = 2 with k = 3 and one colluder");
    s.secagg.t = Some(3);
    assert!(s.validate().is_ok());
    s.min_sites = 3;
    s.cohort_size = None;
    s.secagg.k = None;
    s.secagg.t = None;
    // An unknown optimiser cannot be represented; it is refused when read.
    assert!(Settings::from_toml_str("[optimiser]\nkind = \"sgd\"\n").is_err());
    // The receive window: HTTP/2 sizes the coordinator can serve well.
    for (kib, ok) in [(63, false), (64, true), (16384, true), (16385, false)] {
        s.limits.receive_window_kib = kib;
        let r = s.validate();
        assert_eq!(r.is_ok(), ok, "receive_window_kib = {kib}: {r:?}");
        if !ok {
            assert!(r.is_err_and(|e| e.to_string().contains("limits.receive_window_kib")));
        }
    }
    s.limits.receive_window_kib = 1024;
    assert_eq!(s.limits.receive_window_bytes(), 1 << 20);
    s.limits.max_connections_per_site = 0;
    assert!(
        s.validate()
            .is_err_and(|e| e.to_string().contains("limits.max_connections_per_site"))
    );
    s.limits.max_connections_per_site = 1;
    assert!(s.validate().is_ok());
    s.optimiser.kind = OptimiserKind::FedAdam;
    s.tls.insecure = false;
    assert!(s.validate().is_err(), "TLS without files must be refused");
}

#[test]
fn environment_overrides_the_file() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("f.toml");
    std::fs::write(&path, "rounds = 4\n[training]\nepochs = 2\n")?;
    // SAFETY: no other test reads or writes CONFIDE_* variables.
    unsafe {
        std::env::set_var("CONFIDE_TRAINING__EPOCHS", "7");
        std::env::set_var("CONFIDE_ROUNDS", "9");
        // The CLI's own variables are no settings, and no error either.
        std::env::set_var("CONFIDE_PROGRESS", "log");
        std::env::set_var("CONFIDE_LOG_JSON", "true");
        std::env::set_var("CONFIDE_COORDINATOR", "https://127.0.0.1:1");
        // Nor are the tools .ci/run exports for the tests.
        std::env::set_var("CONFIDE_PYTHON", "/usr/bin/python3");
        std::env::set_var("CONFIDE_WEED", "/usr/bin/weed");
        // Nor the mask PRG's thread count, read by confide-crypto.
        std::env::set_var("CONFIDE_PRG_THREADS", "2");
    }
    let s = Settings::load(&path);
    unsafe {
        std::env::remove_var("CONFIDE_TRAINING__EPOCHS");
        std::env::remove_var("CONFIDE_ROUNDS");
        std::env::remove_var("CONFIDE_PROGRESS");
        std::env::remove_var("CONFIDE_LOG_JSON");
        std::env::remove_var("CONFIDE_COORDINATOR");
        std::env::remove_var("CONFIDE_PYTHON");
        std::env::remove_var("CONFIDE_WEED");
        std::env::remove_var("CONFIDE_PRG_THREADS");
    }
    let s = s?;
    assert_eq!((s.rounds, s.training.epochs), (9, 7));
    assert!(Settings::load(&tmp.path().join("missing.toml")).is_err());
    Ok(())
}

/// The hash names the checkpoints a coordinator may resume from: it must
/// not change for the same config file across releases.
#[test]
fn config_hash_is_pinned() -> Result<(), CoordinatorError> {
    assert_eq!(
        Settings::default().config_hash(),
        "2206dd7d6ee8dea092c9cf049be347b6200f67bf7a6ca978395cb6db82dc0f99"
    );
    let s = Settings::from_toml_str(
        "suite = \"gm\"\nring = \"u64\"\n[model]\nkind = \"mlp\"\nhidden = [16, 8]\n\
         [optimiser]\nkind = \"fedadam\"\n",
    )?;
    assert_eq!(
        s.config_hash(),
        "dcfd92dfa133f1c5658d1b410e76589fdd517a387c8bfa0446f8f97d307af170"
    );
    Ok(())
}

#[test]
fn config_hash_covers_training_settings_only() {
    let a = Settings::default();
    let mut b = a.clone();
    b.listen = "127.0.0.1:1".into();
    assert_eq!(a.config_hash(), b.config_hash());
    b.training.epochs += 1;
    assert_ne!(a.config_hash(), b.config_hash());
    // levels sets the element width: covered whenever it is not the default.
    let mut c = a.clone();
    c.quantisation.levels = 1 << 20;
    assert_ne!(a.config_hash(), c.config_hash());
}

#[test]
fn unknown_names_are_refused_when_read_naming_field_and_choices() {
    for (text, field, choice) in [
        ("suite = \"rsa\"\n", "suite", "\"gm\""),
        ("ring = \"u16\"\n", "ring", "\"u64\""),
        ("[model]\nkind = \"cnn\"\n", "model.kind", "\"mlp\""),
        (
            "[optimiser]\nkind = \"sgd\"\n",
            "optimiser.kind",
            "\"fedyogi\"",
        ),
    ] {
        let e = Settings::from_toml_str(text).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains(field) && e.contains(choice), "{text}: {e}");
    }
    let ok = Settings::from_toml_str("suite = \"gm\"\n[optimiser]\nkind = \"FedAdam\"\n");
    assert!(ok.is_ok_and(|s| s.optimiser.kind == OptimiserKind::FedAdam));
}

/// The typed choices write back the canonical lowercase names (what the
/// config hash and `confide` output show), and read back unchanged.
#[test]
fn named_choices_are_written_as_their_lowercase_names() -> Result<(), Box<dyn std::error::Error>> {
    let s = Settings::from_toml_str(
        "suite = \"gm\"\nring = \"U64\"\n[model]\nkind = \"mlp\"\nhidden = [4]\n\
         [optimiser]\nkind = \"FedAdam\"\n",
    )?;
    let v = serde_json::to_value(&s)?;
    assert_eq!(v["suite"], "gm");
    assert_eq!(v["ring"], "u64");
    assert_eq!(v["model"]["kind"], "mlp");
    assert_eq!(v["optimiser"]["kind"], "fedadam");
    let back: Settings = serde_json::from_value(v)?;
    assert_eq!(back, s);
    Ok(())
}

/// The compose demo's federation must validate for every cohort it can see
/// (3 to 10 sites): its dropout fraction must leave complete-graph
/// parameters for each, and five sites must survive one dropout.
#[test]
fn compose_federation_file_validates() -> Result<(), CoordinatorError> {
    let mut s = Settings::from_toml_str(include_str!("../../../deploy/federation.toml"))?;
    s.tls.insecure = true;
    s.validate()?;
    for n in 3..=s.max_sites {
        let p = s.secagg_params(n)?;
        assert_eq!(p.k, n - 1, "cohort of {n}: complete graph");
    }
    // Five sites: k = 4, t = 3; four survivors each keep t surviving neighbours.
    let p = s.secagg_params(5)?;
    assert_eq!((p.k, p.t), (4, 3));
    assert_eq!(s.max_colluders(5)?, 1);
    Ok(())
}

/// A two-tensor model (an F16 one among them) written to `dir/name`.
fn write_model(dir: &Path, name: &str, scale: f32) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use confide_proto::model::{Dtype, Model, Tensor};
    let mut m = Model::new();
    m.insert(
        "conv.weight",
        Tensor::new(vec![2, 3], vec![scale; 6])?.with_dtype(Dtype::F16),
    );
    m.insert("fc.bias", Tensor::new(vec![2], vec![0.5, -0.5])?);
    let path = dir.join(name);
    std::fs::write(&path, m.to_safetensors(None)?)?;
    Ok(path)
}

fn file_settings(path: &Path) -> Settings {
    let mut s = Settings::default();
    s.tls.insecure = true;
    s.statistics_round = false;
    s.model.kind = ModelKind::File;
    s.model.path = Some(path.to_path_buf());
    s
}

#[test]
fn a_file_model_is_read_relative_to_the_settings_and_hashed_by_content()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let path = write_model(tmp.path(), "init.safetensors", 1.0)?;
    let toml = tmp.path().join("federation.toml");
    std::fs::write(
        &toml,
        "statistics_round = false\n[model]\nkind = \"file\"\npath = \"init.safetensors\"\n[tls]\ninsecure = true\n",
    )?;
    let s = Settings::load(&toml)?;
    assert_eq!(s.model.path.as_deref(), Some(path.as_path()));
    s.validate()?;
    let model = crate::federation::initial_model(&s)?;
    assert_eq!(model.num_params(), 8);
    assert_eq!(
        model.get("conv.weight").map(|t| t.dtype),
        Some(confide_proto::model::Dtype::F16)
    );
    let file = s.model.file(s.limits.max_model_bytes)?;
    assert_eq!(s.config_hash_for_file(&file), s.config_hash());
    // The hash follows the file's content, not its name or place.
    let moved = write_model(tmp.path(), "copy.safetensors", 1.0)?;
    assert_eq!(s.config_hash(), file_settings(&moved).config_hash());
    let edited = write_model(tmp.path(), "edited.safetensors", 2.0)?;
    assert_ne!(s.config_hash(), file_settings(&edited).config_hash());
    // The built-in kinds' hash is untouched by the new field (pinned above).
    Ok(())
}

#[test]
fn bad_file_models_are_refused_naming_the_problem() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let good = write_model(tmp.path(), "init.safetensors", 1.0)?;
    let msg = |s: &Settings| {
        s.validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    let mut s = file_settings(&good);
    s.model.path = None;
    assert!(msg(&s).contains("model.path"), "{}", msg(&s));

    let s = file_settings(&tmp.path().join("missing.safetensors"));
    assert!(
        msg(&s).contains("missing.safetensors") && msg(&s).contains("does not exist"),
        "{}",
        msg(&s)
    );

    let mut s = file_settings(&good);
    s.statistics_round = true;
    assert!(msg(&s).contains("statistics_round"), "{}", msg(&s));

    let mut s = file_settings(&good);
    s.limits.max_model_bytes = 16;
    assert!(
        msg(&s).contains("'conv.weight'") && msg(&s).contains("max_model_bytes"),
        "{}",
        msg(&s)
    );

    // An I64 tensor, written by hand: 8-byte header length, JSON header, data.
    let header = br#"{"step":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&7i64.to_le_bytes());
    let i64s = tmp.path().join("i64.safetensors");
    std::fs::write(&i64s, bytes)?;
    let s = file_settings(&i64s);
    assert!(
        msg(&s).contains("'step'") && msg(&s).contains("I64"),
        "{}",
        msg(&s)
    );

    let mut s = Settings {
        tls: TlsSettings {
            insecure: true,
            ..Default::default()
        },
        ..Default::default()
    };
    s.model.path = Some(good);
    assert!(msg(&s).contains("only read with model.kind"), "{}", msg(&s));
    Ok(())
}
