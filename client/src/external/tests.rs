//! The contract's error paths, each with a tiny `sh` script (no Python):
//! models the scripts "write" are prepared here and copied into place.

use std::time::Instant;

use confide_proto::model::{Dtype, Tensor};

use super::*;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

fn setup() -> std::result::Result<(Model, Dataset, BoxTrainer), Box<dyn std::error::Error>> {
    let t = v1::TrainingConfig {
        model: "logistic".into(),
        features: 2,
        classes: 2,
        ..Default::default()
    };
    let builtin = builtin_trainer(&t)?;
    let mut rng = rand::rng();
    let global = builtin.init(&mut rng);
    let data = Dataset::from_reader("a,b,y\n1,2,0\n3,4,1\n".as_bytes(), "y")?;
    Ok((global, data, builtin))
}

/// A file model: a conv-like F16 tensor and an F32 bias.
fn file_model() -> std::result::Result<Model, ModelError> {
    let mut m = Model::new();
    m.insert(
        "conv.weight",
        Tensor::new(vec![2, 2], vec![0.5, -0.25, 1.0, 2.0])?.with_dtype(Dtype::F16),
    );
    m.insert("fc.bias", Tensor::new(vec![3], vec![0.0, 0.1, -0.1])?);
    Ok(m)
}

fn no_data() -> std::result::Result<Dataset, TrainError> {
    Dataset::new(ndarray::Array2::zeros((0, 0)), Vec::new(), Vec::new())
}

/// A file-model trainer running `script`, 10 s timeout.
fn trainer(script: &str) -> ExternalTrainer {
    ExternalTrainer::for_file_model(
        script,
        ExternalOptions {
            timeout: Duration::from_secs(10),
            data: Some("/data/shard-1".into()),
        },
    )
}

/// Runs `script` in train mode on the file model.
fn train(script: &str) -> Result<FitResult> {
    let global = file_model()?;
    trainer(script).fit(
        &global,
        &no_data()?,
        &FitConfig::default(),
        &mut rand::rng(),
    )
}

/// A file holding `m` (for scripts to copy), in `dir`.
fn prepared(
    dir: &Path,
    name: &str,
    m: &Model,
) -> std::result::Result<PathBuf, Box<dyn std::error::Error>> {
    let p = dir.join(name);
    std::fs::write(&p, m.to_safetensors(None)?)?;
    Ok(p)
}

const METRICS: &str = r#"echo '{"num_examples": 7, "loss": 0.5}' > "$CONFIDE_METRICS""#;

#[test]
fn external_command_update_becomes_a_delta() -> R {
    let (global, data, builtin) = setup()?;
    // "Training" = copying the global model: the delta must be all zeros,
    // and the command must have seen the training CSV.
    let mut t = ExternalTrainer::new(
        "test -s \"$CONFIDE_TRAIN_CSV\" && grep -q '^a,b,label$' \"$CONFIDE_TRAIN_CSV\" && cp \"$CONFIDE_GLOBAL_MODEL\" \"$CONFIDE_OUTPUT_MODEL\"",
        builtin,
    );
    let r = t.fit(&global, &data, &FitConfig::default(), &mut rand::rng())?;
    assert_eq!(r.num_examples, 2);
    assert_eq!(r.delta.num_params(), global.num_params());
    assert!(r.delta.flatten().iter().all(|&x| x == 0.0));
    Ok(())
}

#[test]
fn failing_or_silent_commands_are_errors() -> R {
    let (global, data, _) = setup()?;
    for cmd in ["exit 3", "true"] {
        let (_, _, builtin) = setup()?;
        let mut t = ExternalTrainer::new(cmd, builtin);
        let r = t.fit(&global, &data, &FitConfig::default(), &mut rand::rng());
        assert!(
            r.is_err_and(|e| e.to_string().contains("external trainer")),
            "{cmd}"
        );
    }
    Ok(())
}

#[test]
fn a_file_model_trains_with_the_contract_environment_and_no_csv() -> R {
    // The script checks its environment, then "trains" by copying the
    // model it was given (the delta is zero) and reports its metrics.
    let script = format!(
        r#"test "$CONFIDE_MODE" = train && test -z "$CONFIDE_TRAIN_CSV" \
           && test "$CONFIDE_DATA" = /data/shard-1 && test "$CONFIDE_EPOCHS" = 1 \
           && test -n "$CONFIDE_SEED" && test -n "$CONFIDE_LEARNING_RATE" \
           && cp "$CONFIDE_GLOBAL_MODEL" "$CONFIDE_OUTPUT_MODEL" && {METRICS}"#
    );
    let r = train(&script)?;
    assert_eq!(r.num_examples, 7);
    assert_eq!(r.train_loss, 0.5);
    assert_eq!(r.delta.num_params(), 7);
    assert!(r.delta.flatten().iter().all(|&x| x == 0.0));
    // The delta keeps the file's dtypes, so the update is of the same model.
    assert_eq!(
        r.delta.get("conv.weight").map(|t| t.dtype),
        Some(Dtype::F16)
    );
    Ok(())
}

#[test]
fn a_file_model_is_evaluated_by_the_command() -> R {
    let t = trainer(
        r#"test "$CONFIDE_MODE" = evaluate && test -z "$CONFIDE_OUTPUT_MODEL" \
           && test -s "$CONFIDE_GLOBAL_MODEL" \
           && echo '{"num_examples": 10, "correct": 9, "total": 10, "loss": 0.25}' > "$CONFIDE_METRICS""#,
    );
    assert!(!t.needs_data());
    let e = t.evaluate(&file_model()?, &no_data()?)?;
    assert_eq!((e.num_examples, e.correct, e.loss_sum), (10, 9, 2.5));
    Ok(())
}

/// The `ExternalError` of a train call, or a panic naming the script.
fn train_error(script: &str) -> ExternalError {
    match train(script) {
        Err(TrainError::External(e)) => e,
        other => panic!("{script}: expected an external-trainer error, got {other:?}"),
    }
}

#[test]
fn a_command_past_its_timeout_is_killed_with_its_children() {
    let t0 = Instant::now();
    let global = file_model().unwrap_or_default();
    let dir = tempfile::tempdir().ok();
    let pid_file = dir
        .as_ref()
        .map(|d| d.path().join("pid"))
        .unwrap_or_default();
    let mut t = ExternalTrainer::for_file_model(
        // The shell starts a child that would outlive a kill of the shell alone.
        format!("sleep 30 & echo $! > '{}'; wait", pid_file.display()),
        ExternalOptions {
            timeout: Duration::from_millis(300),
            data: None,
        },
    );
    let r = no_data().map_err(|e| e.to_string()).and_then(|d| {
        t.fit(&global, &d, &FitConfig::default(), &mut rand::rng())
            .map_err(|e| e.to_string())
    });
    assert!(
        r.as_ref().is_err_and(
            |e| e.contains("did not finish within 0s") && e.contains("--train-timeout-secs")
        ),
        "{r:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The shell's child died with it (gone, or a zombie left for init);
    // SIGKILL is delivered asynchronously, so give it a moment under load.
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let dead = || {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        matches!(state, None | Some("Z" | "X"))
    };
    let waited = Instant::now();
    while !dead() && waited.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !pid.trim().is_empty() && dead(),
        "pid {pid:?} still running"
    );
}

#[test]
fn a_non_zero_exit_quotes_the_end_of_stderr() {
    let e = train_error("echo 'Traceback: ValueError: bad shard' >&2; exit 3");
    match &e {
        ExternalError::Failed {
            status,
            stderr,
            mode,
            ..
        } => {
            assert!(status.contains('3'), "{status}");
            assert!(stderr.contains("ValueError: bad shard"), "{stderr}");
            assert_eq!(*mode, Mode::Train);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("ValueError"), "{e}");
}

#[test]
fn output_model_problems_each_have_their_error() -> R {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let good = file_model()?;
    let mut nan = good.clone();
    nan.insert("fc.bias", Tensor::new(vec![3], vec![0.0, f32::NAN, 0.0])?);
    let mut renamed = good.clone();
    renamed.tensors.remove("fc.bias");
    renamed.insert("fc.b", Tensor::new(vec![3], vec![0.0; 3])?);
    let mut reshaped = good.clone();
    reshaped.insert("fc.bias", Tensor::new(vec![1, 3], vec![0.0; 3])?);
    let mut retyped = good.clone();
    retyped.insert("conv.weight", Tensor::new(vec![2, 2], vec![0.0; 4])?);
    let copy = |name: &str, m: &Model| -> std::result::Result<String, Box<dyn std::error::Error>> {
        let p = prepared(d, name, m)?;
        Ok(format!(
            r#"cp '{}' "$CONFIDE_OUTPUT_MODEL" && {METRICS}"#,
            p.display()
        ))
    };

    let e = train_error(&copy("nan.safetensors", &nan)?);
    assert!(
        matches!(&e, ExternalError::NonFiniteOutput { name, index: 1, .. } if name == "fc.bias"),
        "{e:?}"
    );
    for (file, m, want) in [
        ("renamed.safetensors", &renamed, "fc.b"),
        ("reshaped.safetensors", &reshaped, "fc.bias"),
        ("retyped.safetensors", &retyped, "F16"),
    ] {
        let e = train_error(&copy(file, m)?);
        assert!(
            matches!(&e, ExternalError::OutputLayout(_)) && e.to_string().contains(want),
            "{file}: {e}"
        );
    }
    let e = train_error(&format!(
        r#"echo junk > "$CONFIDE_OUTPUT_MODEL" && {METRICS}"#
    ));
    assert!(matches!(e, ExternalError::BadOutputModel(_)), "{e:?}");
    let e = train_error(METRICS);
    assert!(matches!(e, ExternalError::NoOutputModel { .. }), "{e:?}");
    Ok(())
}

#[test]
fn metrics_problems_each_have_their_error() {
    let copy = r#"cp "$CONFIDE_GLOBAL_MODEL" "$CONFIDE_OUTPUT_MODEL""#;
    let e = train_error(copy);
    assert!(
        matches!(
            e,
            ExternalError::NoMetrics {
                mode: Mode::Train,
                ..
            }
        ),
        "{e:?}"
    );
    for (json, want) in [
        ("not json", "not a JSON object"),
        (r#"{"loss": 1.0}"#, "num_examples\" is missing"),
        (r#"{"num_examples": 0}"#, "above 0"),
        (r#"{"num_examples": -3}"#, "not a JSON object"),
        (r#"{"num_examples": 5, "loss": NaN}"#, "not a JSON object"),
    ] {
        let e = train_error(&format!(r#"{copy} && echo '{json}' > "$CONFIDE_METRICS""#));
        assert!(
            matches!(&e, ExternalError::BadMetrics { .. }) && e.to_string().contains(want),
            "{json}: {e}"
        );
    }
}

#[test]
fn evaluation_metrics_are_checked() {
    for (json, want) in [
        (r#"{"num_examples": 10}"#, "\"correct\" is missing"),
        (r#"{"num_examples": 10, "correct": 11}"#, "more than the 10"),
        (
            r#"{"num_examples": 10, "total": 9, "correct": 1}"#,
            "disagree",
        ),
    ] {
        let t = trainer(&format!(r#"echo '{json}' > "$CONFIDE_METRICS""#));
        let r = file_model()
            .map_err(TrainError::from)
            .and_then(|m| t.evaluate(&m, &no_data()?));
        assert!(
            matches!(
                &r,
                Err(TrainError::External(ExternalError::BadMetrics {
                    mode: Mode::Evaluate,
                    ..
                }))
            ) && r.as_ref().is_err_and(|e| e.to_string().contains(want)),
            "{json}: {r:?}"
        );
    }
    // `total` alone counts the examples.
    let t = trainer(r#"echo '{"total": 4, "correct": 3}' > "$CONFIDE_METRICS""#);
    let r = file_model()
        .map_err(TrainError::from)
        .and_then(|m| t.evaluate(&m, &no_data()?));
    assert!(
        matches!(
            r,
            Ok(EvalResult {
                num_examples: 4,
                correct: 3,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn a_built_in_model_at_a_site_without_a_csv_is_refused() -> R {
    let (global, _, builtin) = setup()?;
    let mut t = ExternalTrainer::new("true", builtin);
    let r = t.fit(
        &global,
        &no_data()?,
        &FitConfig::default(),
        &mut rand::rng(),
    );
    assert!(
        matches!(r, Err(TrainError::External(ExternalError::NoDataset))),
        "{r:?}"
    );
    Ok(())
}

#[test]
fn the_factory_picks_the_command_for_file_models() -> R {
    let f = factory_with("true".into(), ExternalOptions::default());
    let file = v1::TrainingConfig {
        model: ModelKind::File.name().into(),
        ..Default::default()
    };
    assert!(!f(&file)?.needs_data());
    let logistic = v1::TrainingConfig {
        model: "logistic".into(),
        features: 2,
        classes: 2,
        ..Default::default()
    };
    assert!(f(&logistic)?.needs_data());
    // Without a command, a file model is refused with what to do.
    let e = builtin_trainer(&file).err().map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.contains("--train-command")));
    Ok(())
}
