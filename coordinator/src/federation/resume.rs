//! Building the [`Federation`]: the settings' initial model, or the state of
//! the newest complete checkpoint of the same configuration.

use std::sync::{Arc, Mutex};

use confide_proto::model::ModelImage;
use tokio::sync::Notify;
use tracing::info;

use super::registry::Registry;
use super::upload::UploadSlots;
use super::{Federation, Inner};
use crate::checkpoint::CheckpointStore;
use crate::error::CoordinatorError;
use crate::metrics::Metrics;
use crate::optim::ServerOptimiser;
use crate::settings::Settings;

impl Federation {
    /// [`Federation::with_metrics`] with checkpoints in `store` (an active
    /// coordinator's store is fenced by its lease, see `serve.rs`): resumes
    /// from the newest complete checkpoint of the same configuration.
    pub fn with_store(
        settings: Settings,
        metrics: Arc<Metrics>,
        store: Option<Arc<dyn CheckpointStore>>,
    ) -> Result<Arc<Self>, CoordinatorError> {
        settings.validate()?;
        let quant = settings.quantiser(settings.ring)?;
        let (mut model, config_hash) = settings.initial_model_and_hash()?;
        let mut optimiser = ServerOptimiser::new(
            settings.optimiser.kind,
            &settings.optimiser,
            model.num_params(),
        );
        let (mut preprocess, mut next_round, mut completed, mut history, mut model_round) =
            (None, 1, 0, Vec::new(), 0);
        if let Some(store) = &store
            && let Some(mut c) = store.latest()?
        {
            if c.manifest.config_hash != config_hash && !settings.checkpoints.allow_config_change {
                return Err(CoordinatorError::Checkpoint(format!(
                    "{} was written with config hash {}, the current config hashes to {}; \
                     use a new checkpoint dir or url, or set checkpoints.allow_config_change",
                    c.path.display(),
                    c.manifest.config_hash,
                    config_hash
                )));
            }
            model
                .check_same_layout(&c.model)
                .map_err(CoordinatorError::CheckpointModel)?;
            if let Some((m, v)) = c.optimiser.take() {
                optimiser
                    .restore(m, v)
                    .map_err(CoordinatorError::Checkpoint)?;
            }
            info!(checkpoint = %c.path.display(), next_round = c.manifest.next_round, "resuming from checkpoint");
            model = c.model;
            preprocess = c.manifest.preprocess;
            next_round = c.manifest.next_round;
            completed = c.manifest.completed_train_rounds;
            history = c.manifest.history;
            model_round = c.manifest.model_round;
        }
        let model = Arc::new(ModelImage::new(model)?);
        let final_done = completed >= settings.rounds
            && history
                .iter()
                .any(|r| r.kind == "evaluate" && r.success && r.model_round == model_round);
        let final_accuracy = history
            .iter()
            .rev()
            .find(|r| r.kind == "evaluate" && r.success)
            .and_then(|r| r.accuracy);
        metrics.resumed(&history, completed);
        Ok(Arc::new(Federation {
            uploads: UploadSlots::new(
                settings.limits.max_concurrent_uploads,
                settings.limits.upload_buffer_mib,
                metrics.upload_slots_in_use(),
            ),
            metrics,
            quant,
            config_hash,
            ca_fingerprint: std::sync::OnceLock::new(),
            store,
            inner: Mutex::new(Inner {
                registry: Registry::default(),
                round: None,
                model,
                model_round,
                optimiser,
                preprocess,
                next_round,
                completed,
                history,
                final_accuracy,
                final_done,
                replay: Default::default(),
            }),
            wake: Notify::new(),
            grace_done: std::sync::atomic::AtomicBool::new(false),
            settings,
        }))
    }
}
