//! `[limits]`: what one federation lets its sites cost the coordinator
//! (`docs/security.md`, limits; `docs/performance.md`, memory).

use serde::{Deserialize, Serialize};

impl LimitSettings {
    /// The directory uploads spill to.
    pub fn spill_dir(&self) -> std::path::PathBuf {
        self.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Bytes per model download chunk.
    pub fn download_chunk_bytes(&self) -> u64 {
        u64::from(self.download_chunk_kib.max(1)) << 10
    }

    /// The HTTP/2 receive window in bytes (stream and connection alike).
    pub fn receive_window_bytes(&self) -> u32 {
        let (lo, hi) = RECEIVE_WINDOW_KIB.into_inner();
        self.receive_window_kib.clamp(lo, hi) << 10
    }

    /// Checks the limits; the error names the key and its allowed range.
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < confide_proto::CHUNK_BYTES + 4096 {
            return Err(format!(
                "limits.max_message_bytes must be at least {} (one chunk)",
                confide_proto::CHUNK_BYTES + 4096
            ));
        }
        if self.max_concurrent_uploads == 0 {
            return Err("limits.max_concurrent_uploads must be at least 1".into());
        }
        if self.max_concurrent_downloads == 0 {
            return Err("limits.max_concurrent_downloads must be at least 1".into());
        }
        if !(4..=2048).contains(&self.download_chunk_kib) {
            return Err(format!(
                "limits.download_chunk_kib must be 4 to 2048 (sites decode messages of up to \
             4 MiB), got {}",
                self.download_chunk_kib
            ));
        }
        if !(self.join_rate_per_sec.is_finite() && self.join_rate_per_sec > 0.0)
            || self.join_burst == 0
        {
            return Err(
                "limits.join_rate_per_sec must be positive and limits.join_burst at least 1".into(),
            );
        }
        if !(self.site_rate_per_sec.is_finite() && self.site_rate_per_sec > 0.0)
            || self.site_burst == 0
        {
            return Err(
                "limits.site_rate_per_sec must be positive and limits.site_burst at least 1".into(),
            );
        }
        if !RECEIVE_WINDOW_KIB.contains(&self.receive_window_kib) {
            return Err(format!(
                "limits.receive_window_kib must be 64 to 16384 (HTTP/2 windows of 64 KiB to \
             16 MiB), got {}",
                self.receive_window_kib
            ));
        }
        if self.max_connections_per_site == 0 {
            return Err("limits.max_connections_per_site must be at least 1".into());
        }
        if self.upload_idle_secs == 0 {
            return Err("limits.upload_idle_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// `limits.receive_window_kib`'s range: about HTTP/2's default window (64 KiB)
/// to 16 MiB.
const RECEIVE_WINDOW_KIB: std::ops::RangeInclusive<u32> = 64..=16384;

/// Resource limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest gRPC message decoded.
    pub max_message_bytes: usize,
    /// Largest serialised model.
    pub max_model_bytes: u64,
    /// Masked-input uploads buffered at once.
    pub max_concurrent_uploads: usize,
    /// Memory for uploads waiting to be added into the sum, MiB. An upload
    /// that does not fit in what is left goes to a spill file instead of
    /// waiting, so memory stays within this budget whatever the model size
    /// (0: every upload spills).
    pub upload_buffer_mib: u32,
    /// Where uploads spill (unlinked temporary files); default: the
    /// system's temporary directory (`TMPDIR`, else `/tmp`).
    pub spill_dir: Option<std::path::PathBuf>,
    /// Model downloads streamed at once; the others wait for a turn, holding
    /// no buffer, so download memory does not grow with the sites.
    pub max_concurrent_downloads: usize,
    /// KiB per model download chunk (4 to 2048: sites decode messages of
    /// up to 4 MiB). Each chunk is encoded from the f32 model as it is sent,
    /// so the download turns hold `max_concurrent_downloads` chunks at most.
    /// The default, 32 KiB, keeps each chunk's encode buffer under glibc's
    /// mmap threshold: 64 KiB chunks grew it past the threshold, a fresh
    /// mapping (page faults, an unmap) per chunk; 16 KiB measured no faster
    /// (docs/performance.md).
    pub download_chunk_kib: u32,
    /// Join requests admitted per second (global token bucket).
    pub join_rate_per_sec: f64,
    /// Join requests admitted in a burst.
    pub join_burst: u32,
    /// Site RPCs admitted per second per identity (certificate name, or the
    /// session's site without TLS); a whole upload stream counts once. An
    /// honest site makes about six calls a round, and rounds of a small
    /// model can take 30 ms, so the default (1000/s, burst 2000) only stops
    /// floods; a refused unmask fails the round.
    pub site_rate_per_sec: f64,
    /// Site RPCs admitted in a burst per identity.
    pub site_burst: u32,
    /// Seconds an upload stream may send nothing before it loses its slot.
    pub upload_idle_secs: u32,
    /// HTTP/2 receive window, KiB, per stream and per connection (64 to
    /// 16384): how much a site may send before the coordinator has read it.
    /// An upload moves at most one window per round trip, so a link of
    /// 50 ms carries at most 20 MiB/s per upload at the default, 1024.
    /// Memory: sites send an upload's data only once it has a slot
    /// (`ready`), so honest sites leave at most this times
    /// `max_concurrent_uploads` unread here; a misbehaving enrolled site
    /// can leave at most this much on each of its connections, of which it
    /// holds at most `max_connections_per_site`.
    pub receive_window_kib: u32,
    /// Connections open at once per certificate name (connections without
    /// a client certificate share one count of 64). An honest site keeps one; a
    /// further connection over the limit closes that name's oldest, so a
    /// site reconnecting after a fault is never locked out, and one site
    /// can hold at most this many receive windows.
    pub max_connections_per_site: usize,
}
