//! A federation checkpointed by an earlier Confide resumes unchanged: the
//! fixture under `tests/fixtures/pre-restructure-checkpoint` was written by
//! `confide demo` (30 training rounds, suite intl) before the workspace was
//! restructured, and is read here by the current code.

use std::path::Path;

use confide_coordinator::{Federation, Settings, checkpoint};

const FIXTURE: &str = "tests/fixtures/pre-restructure-checkpoint";

/// The settings `confide demo` runs with (its config file plus the demo's
/// overrides), pointed at a copy of the fixture.
fn demo_settings(dir: &Path) -> Result<Settings, Box<dyn std::error::Error>> {
    let mut s = Settings::from_toml_str(include_str!("../federation.example.toml"))?;
    s.federation = "demo".into();
    s.checkpoints.dir = Some(dir.to_path_buf());
    Ok(s)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

#[test]
fn a_checkpoint_from_before_the_restructure_resumes_byte_identical()
-> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    copy_dir(Path::new(FIXTURE), tmp.path())?;
    let written = checkpoint::latest(tmp.path())?.ok_or("fixture checkpoint not found")?;
    let settings = demo_settings(tmp.path())?;
    // Same settings, same hash: nothing about the config's meaning changed.
    assert_eq!(settings.config_hash(), written.manifest.config_hash);
    let stored_model = std::fs::read(written.path.join("model.safetensors"))?;

    let fed = Federation::new(settings)?;
    // The resumed global model serialises to the very bytes on disk.
    assert_eq!(fed.model_bytes().as_slice(), stored_model.as_slice());
    assert_eq!(fed.history().len(), 32);
    assert_eq!(fed.history(), written.manifest.history);
    Ok(())
}
