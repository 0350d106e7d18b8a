//! History records ([`RoundRecord`]) to and from the Admin API's
//! [`pb::RoundRecord`], both directions in one place. Both structs are
//! destructured without `..`, so a field added on either side is a compile
//! error here rather than a value silently dropped.
//!
//! Used by the server's Admin handlers (`grpc`) and by the admin client of
//! the CLI (`cli`); it depends on neither.

use confide_proto::v1 as pb;

use crate::checkpoint::RoundRecord;

/// A history record as the Admin API's message. A missing accuracy or loss
/// travels as NaN, because proto3 doubles have no presence.
pub fn record_to_pb(r: RoundRecord) -> pb::RoundRecord {
    let RoundRecord {
        round,
        kind,
        success,
        message,
        cohort,
        survivors,
        dropped,
        accuracy,
        loss,
        eval_examples,
        // Not on the wire: operators see it in the checkpoint manifest.
        model_round: _,
        duration_secs,
        stage_secs,
        bytes_in,
        bytes_out,
        blamed,
        declined,
    } = r;
    let pair = |(site, reason)| pb::Blame { site, reason };
    pb::RoundRecord {
        round,
        kind,
        success,
        message,
        cohort,
        survivors,
        dropped,
        accuracy: accuracy.unwrap_or(f64::NAN),
        loss: loss.unwrap_or(f64::NAN),
        eval_examples,
        duration_secs,
        stage_secs: stage_secs.into_iter().collect(),
        bytes_in,
        bytes_out,
        blamed: blamed.into_iter().map(pair).collect(),
        declined: declined.into_iter().map(pair).collect(),
    }
}

/// The Admin API's message as a history record: NaN becomes `None` again and
/// `model_round`, which the wire does not carry, is 0.
pub fn record_from_pb(r: pb::RoundRecord) -> RoundRecord {
    let pb::RoundRecord {
        round,
        kind,
        success,
        message,
        cohort,
        survivors,
        dropped,
        accuracy,
        loss,
        eval_examples,
        duration_secs,
        stage_secs,
        bytes_in,
        bytes_out,
        blamed,
        declined,
    } = r;
    let opt = |x: f64| if x.is_nan() { None } else { Some(x) };
    RoundRecord {
        round,
        kind,
        success,
        message,
        cohort,
        survivors,
        dropped,
        accuracy: opt(accuracy),
        loss: opt(loss),
        eval_examples,
        model_round: 0,
        duration_secs,
        stage_secs: stage_secs.into_iter().collect(),
        bytes_in,
        bytes_out,
        blamed: blamed.into_iter().map(|b| (b.site, b.reason)).collect(),
        declined: declined.into_iter().map(|b| (b.site, b.reason)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(accuracy: Option<f64>, loss: Option<f64>) -> RoundRecord {
        RoundRecord {
            round: 7,
            kind: "train".into(),
            success: false,
            message: "too few survivors".into(),
            cohort: 5,
            survivors: 2,
            dropped: 3,
            accuracy,
            loss,
            eval_examples: 40,
            model_round: 0,
            duration_secs: 1.5,
            stage_secs: vec![("advertise".into(), 0.25)],
            bytes_in: 1000,
            bytes_out: 2000,
            blamed: vec![("hospital-e".into(), "sent an inconsistent share".into())],
            declined: vec![("hospital-b".into(), "training_bounds: 9 epochs".into())],
        }
    }

    #[test]
    fn records_survive_the_round_trip() {
        for r in [record(Some(0.9), Some(0.3)), record(None, None)] {
            assert_eq!(record_from_pb(record_to_pb(r.clone())), r);
        }
    }

    #[test]
    fn missing_metrics_travel_as_nan() {
        let p = record_to_pb(record(None, Some(0.5)));
        assert!(p.accuracy.is_nan());
        assert_eq!(p.loss, 0.5);
    }
}
