//! The Site handlers' own limits: the per-identity rate limit, and an upload
//! stream that stalls or outlives the stage losing its slot.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use super::*;
use crate::access::{Access, JoinLimiter};
use crate::federation::Federation;
use crate::federation::round::tests::{Res, honest, plaintext, start, wire};
use crate::grpc::rate::SiteLimiter;

fn handlers(fed: Arc<Federation>) -> Handlers {
    let l = fed.settings().limits.clone();
    Handlers {
        tls: false,
        access: Arc::new(Access::new(&[], None)),
        joins: Arc::new(JoinLimiter::new(l.join_rate_per_sec, l.join_burst)),
        rates: Arc::new(SiteLimiter::new(l.site_rate_per_sec, l.site_burst)),
        downloads: Arc::new(tokio::sync::Semaphore::new(l.max_concurrent_downloads)),
        fed,
    }
}

fn unmask(session: &str) -> Request<pb::UnmaskResponse> {
    Request::new(pb::UnmaskResponse {
        session: session.into(),
        round: 1,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_site_over_its_rate_is_refused_and_others_are_not() -> Res<()> {
    let mut s = plaintext(2);
    s.limits.site_burst = 3;
    s.limits.site_rate_per_sec = 0.001;
    let fed = Federation::new(s)?;
    let a = fed.join("a", &[7; 32], None)?;
    let b = fed.join("b", &[7; 32], None)?;
    let h = handlers(fed);
    // Within the burst, calls reach the federation (no round: refused there).
    for _ in 0..3 {
        let e = h
            .unmask(unmask(&a))
            .await
            .err()
            .ok_or("no round is running")?;
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    }
    let e = h.unmask(unmask(&a)).await.err().ok_or("over the burst")?;
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(
        e.message().contains("rate limit") && e.message().contains("limits.site_rate_per_sec"),
        "{e}"
    );
    // Other calls of the same site count against the same bucket.
    let tasks = h
        .tasks(Request::new(pb::TasksRequest { session: a.clone() }))
        .await
        .err()
        .ok_or("limited")?;
    assert_eq!(tasks.code(), Code::ResourceExhausted);
    // Another site has its own bucket; an unknown session is not an identity.
    let e = h
        .unmask(unmask(&b))
        .await
        .err()
        .ok_or("no round is running")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = h.unmask(unmask("nobody")).await.err().ok_or("unknown")?;
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    Ok(())
}

fn chunk(
    session: &str,
    round: u64,
    offset: u64,
    total_len: u64,
    data: Vec<u8>,
) -> pb::MaskedInputChunk {
    pb::MaskedInputChunk {
        session: session.into(),
        round,
        offset,
        total_len,
        data: data.into(),
        masking: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_upload_loses_its_slot_and_none_outlives_the_stage() -> Res<()> {
    let mut s = plaintext(3);
    s.limits.max_concurrent_uploads = 1;
    s.limits.upload_idle_secs = 2;
    let r = start(s.clone(), &["a", "b", "c"]).await?;
    let (round, len) = (r.start.round, r.start.vector_len);
    let v = honest(&s, 0.25)?;
    // Whole bytes: a multiple of 8 elements.
    let half = wire(&r.start, &v, 0..v.len() / 16 * 8);

    // a sends half its vector, then nothing: after 2 s it is cut off.
    let a = &r.sites[0].session;
    let mut up = r.fed.begin_upload(a, None, round, len).await?;
    up.push(0, &half)?;
    let mut stalled = tokio_stream::pending::<Result<pb::MaskedInputChunk, Status>>();
    let begun = tokio::time::Instant::now();
    let e = receive_chunks(&mut stalled, &mut up, a, round, 2)
        .await
        .err()
        .ok_or("a stalled stream must fail")?;
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(e.message().contains("stalled"), "{e}");
    assert_eq!(tokio::time::Instant::now() - begun, Duration::from_secs(2));
    drop(up);

    // Its slot is free at once for b, whose stream trickles a chunk every
    // second (never idle for 2 s) but cannot outlive the stage deadline.
    let b = &r.sites[1].session;
    let mut up = tokio::time::timeout(
        Duration::from_millis(1),
        r.fed.begin_upload(b, None, round, len),
    )
    .await??;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = tokio::spawn({
        let (b, v, start) = (b.clone(), v.clone(), r.start.clone());
        async move {
            // Eight elements (whole bytes at any width), then empty chunks.
            for i in 0.. {
                let data = if i == 0 {
                    wire(&start, &v, 0..8)
                } else {
                    Vec::new()
                };
                let at = if i == 0 { 0 } else { 8 };
                if tx.send(Ok(chunk(&b, round, at, len, data))).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let mut trickle = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
    let e = receive_chunks(&mut trickle, &mut up, b, round, 2)
        .await
        .err()
        .ok_or("a stream past the deadline must fail")?;
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(e.message().contains("deadline"), "{e}");
    // The deadline is the stage's: 12 s after the round started.
    let waited = tokio::time::Instant::now() - begun;
    assert!(
        waited > Duration::from_secs(10) && waited <= Duration::from_secs(12),
        "{waited:?}"
    );
    assert!(up.received() > 0 && up.received() < up.elements());
    drop(up);
    sender.abort();
    let _ = r.driver.await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_complete_stream_is_received_in_chunks() -> Res<()> {
    let s = plaintext(2);
    let r = start(s.clone(), &["a", "b"]).await?;
    let (round, len) = (r.start.round, r.start.vector_len);
    let v = honest(&s, 0.25)?;
    let a = &r.sites[0].session;
    let mut up = r.fed.begin_upload(a, None, round, len).await?;
    let mid = v.len() / 16 * 8;
    up.push(0, &wire(&r.start, &v, 0..mid))?;
    let rest = chunk(a, round, mid as u64, len, wire(&r.start, &v, mid..v.len()));
    let mut stream = tokio_stream::iter([Ok(rest)]);
    receive_chunks(&mut stream, &mut up, a, round, 2).await?;
    r.fed.finish_upload(a, None, up, None).await?;
    // A chunk of another round in the same stream is refused.
    let b = &r.sites[1].session;
    let mut up = r.fed.begin_upload(b, None, round, len).await?;
    let mut wrong = tokio_stream::iter([Ok(chunk(b, round + 1, 0, len, Vec::new()))]);
    let e = receive_chunks(&mut wrong, &mut up, b, round, 2)
        .await
        .err()
        .ok_or("mixed rounds")?;
    assert_eq!(e.code(), Code::InvalidArgument);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn downloads_beyond_the_turns_wait_holding_nothing() -> Res<()> {
    let mut s = plaintext(3);
    s.limits.max_concurrent_downloads = 1;
    let r = start(s, &["a", "b", "c"]).await?;
    let h = handlers(r.fed.clone());
    let req = |i: usize| {
        Request::new(pb::DownloadModelRequest {
            session: r.sites[i].session.clone(),
            round: r.start.round,
        })
    };
    let first = h.download_model(req(0)).await?.into_inner();
    // The second site's call does not get a stream while the first holds
    // the only turn (paused time: the timeout fires only if nothing else can run).
    let waiting = tokio::time::timeout(Duration::from_secs(5), h.download_model(req(1))).await;
    assert!(
        waiting.is_err(),
        "a second download started within one turn"
    );
    // Reading the first stream to its end (and dropping it) frees the turn.
    let got: Vec<pb::ModelChunk> = first
        .map(|c| c.map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .await?;
    assert!(!got.is_empty());
    let second = tokio::time::timeout(Duration::from_secs(5), h.download_model(req(1))).await??;
    let chunks: Vec<_> = second.into_inner().collect().await;
    let bytes: usize = chunks
        .into_iter()
        .map(|c| c.map(|c| c.data.len()))
        .sum::<Result<usize, Status>>()?;
    assert_eq!(bytes, got.iter().map(|c| c.data.len()).sum::<usize>());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn uploads_beyond_the_buffer_budget_spill_instead_of_waiting() -> Res<()> {
    let spill = tempfile::tempdir()?;
    let mut s = plaintext(3);
    s.limits.max_concurrent_uploads = 8;
    // Room for one small upload: the next spills rather than waits.
    s.limits.upload_buffer_mib = 1;
    s.limits.spill_dir = Some(spill.path().to_path_buf());
    let r = start(s.clone(), &["a", "b", "c"]).await?;
    let (round, len) = (r.start.round, r.start.vector_len);
    let v = honest(&s, 0.25)?;
    let bytes = wire(&r.start, &v, 0..v.len());
    let mut ups = Vec::new();
    for site in &r.sites {
        let up = tokio::time::timeout(
            Duration::from_secs(1),
            r.fed.begin_upload(&site.session, None, round, len),
        )
        .await??;
        ups.push(up);
    }
    let spilled: Vec<bool> = ups.iter().map(|u| u.spilled()).collect();
    assert_eq!(spilled, [false, true, true]);
    for (site, mut up) in r.sites.iter().zip(ups) {
        up.push(0, &bytes)?;
        r.fed.finish_upload(&site.session, None, up, None).await?;
    }
    let report = r.driver.await??;
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!(rec.survivors, 3);
    assert_eq!(std::fs::read_dir(spill.path())?.count(), 0);
    Ok(())
}

fn decline(session: &str, round: u64) -> Request<pb::DeclineRequest> {
    Request::new(pb::DeclineRequest {
        session: session.into(),
        round,
        reason_code: pb::DeclineReason::TrainingBounds as i32,
        message: "round 1 asks for 9 epochs; this site runs 1 to 2".into(),
        replay_cohort: Vec::new(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_decline_ends_the_wait_for_its_site_and_a_wrong_one_is_refused() -> Res<()> {
    let s = plaintext(3);
    let r = start(s.clone(), &["a", "b", "c"]).await?;
    let h = handlers(r.fed.clone());
    let (round, len) = (r.start.round, r.start.vector_len);
    let c = r.sites[2].session.clone();
    // Refused with the statuses of any stage message, and without effect.
    let e = h
        .decline(decline("nobody", round))
        .await
        .err()
        .ok_or("unknown session")?;
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = h
        .decline(decline(&c, round + 1))
        .await
        .err()
        .ok_or("another round")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&format!("round {}", round + 1)), "{e}");
    // a and b upload; the round then waits for c only, its deadline 12 s away.
    let begun = tokio::time::Instant::now();
    for site in &r.sites[..2] {
        let mut up = r.fed.begin_upload(&site.session, None, round, len).await?;
        let v = honest(&s, 0.25)?;
        up.push(0, &wire(&r.start, &v, 0..v.len()))?;
        r.fed.finish_upload(&site.session, None, up, None).await?;
    }
    h.decline(decline(&c, round)).await?;
    // A retried decline (its answer lost) changes nothing.
    h.decline(decline(&c, round)).await?;
    let report = r.driver.await??;
    let waited = tokio::time::Instant::now() - begun;
    assert!(
        waited < Duration::from_secs(1),
        "waited {waited:?} (virtual)"
    );
    let rec = &report.history[0];
    assert!(rec.success, "{}", rec.message);
    assert_eq!((rec.cohort, rec.survivors, rec.dropped), (3, 2, 1));
    assert_eq!(
        rec.declined,
        [(
            "c".to_string(),
            "training_bounds: round 1 asks for 9 epochs; this site runs 1 to 2".to_string()
        )]
    );
    assert!(rec.blamed.is_empty());
    let text = h.fed.metrics().encode()?;
    assert!(
        text.contains("confide_declines_total{reason=\"training_bounds\"} 1\n"),
        "{text}"
    );
    // The round is over: a late decline is refused.
    let e = h
        .decline(decline(&c, round))
        .await
        .err()
        .ok_or("no round")?;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    Ok(())
}
