//! The defaults of every setting (what an empty config file means).

use confide_proto::model::ModelKind;

use super::*;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            federation: "confide".into(),
            listen: "0.0.0.0:7443".into(),
            suite: Suite::Intl,
            rounds: 10,
            min_sites: 3,
            max_sites: 100,
            cohort_fraction: 1.0,
            cohort_size: None,
            secure_aggregation: true,
            ring: Ring::U32,
            statistics_round: true,
            evaluate_every_round: true,
            final_evaluation: true,
            max_consecutive_failures: 10,
            join_grace_secs: 0.0,
            secagg: SecAggSettings::default(),
            model: ModelSettings::default(),
            training: TrainingSettings::default(),
            quantisation: QuantSettings::default(),
            optimiser: OptimiserSettings::default(),
            checkpoints: CheckpointSettings::default(),
            tls: TlsSettings::default(),
            limits: LimitSettings::default(),
            metrics: MetricsSettings::default(),
            ha: HaSettings::default(),
        }
    }
}

impl Default for SecAggSettings {
    fn default() -> Self {
        SecAggSettings {
            dropout_fraction: 0.1,
            collusion_fraction: 0.1,
            sigma: 40,
            eta: 30,
            k: None,
            t: None,
            min_survivors: None,
            complete_graph_up_to: 32,
            exclude_after_blamed_rounds: 3,
            stage_timeout_secs: 60,
            reconnect_grace_secs: 5.0,
        }
    }
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            kind: ModelKind::Logistic,
            features: 30,
            classes: 2,
            hidden: Vec::new(),
            init_seed: 0,
            path: None,
        }
    }
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            epochs: 5,
            batch_size: 16,
            learning_rate: 0.05,
            l2: 0.0,
            proximal_mu: 0.0,
            stats_scale_bits: 16,
        }
    }
}

impl Default for QuantSettings {
    fn default() -> Self {
        QuantSettings {
            clip: 4.0,
            max_weight: 10_000,
            levels: confide_crypto::quant::DEFAULT_LEVELS,
            scale: None,
        }
    }
}

impl Default for OptimiserSettings {
    fn default() -> Self {
        OptimiserSettings {
            kind: OptimiserKind::FedAvg,
            server_lr: 1.0,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        }
    }
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_message_bytes: 4 << 20,
            max_model_bytes: 1 << 30,
            max_concurrent_uploads: 8,
            max_concurrent_downloads: 8,
            download_chunk_kib: 32,
            upload_buffer_mib: 16,
            spill_dir: None,
            join_rate_per_sec: 5.0,
            join_burst: 50,
            // A site makes about six calls a round; this leaves room for fast
            // rounds and reconnect retries while bounding a flood.
            site_rate_per_sec: 1000.0,
            site_burst: 2000,
            upload_idle_secs: 15,
            // Enough for 20 MiB/s per upload across a 50 ms link; loopback
            // and LAN need far less (docs/performance.md, "Across clouds").
            receive_window_kib: 1024,
            // One for the site, room for reconnects and an operator's tools.
            max_connections_per_site: 4,
        }
    }
}
