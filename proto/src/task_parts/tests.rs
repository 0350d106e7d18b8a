use super::*;

fn unmask(survivors: u32) -> v1::Task {
    v1::Task {
        kind: Some(v1::task::Kind::UnmaskRequest(v1::UnmaskRequest {
            round: 3,
            survivors: (0..survivors).collect(),
            signatures: (0..survivors)
                .map(|m| v1::RelayedSignature {
                    signature: Some(v1::SurvivorSignature {
                        round: 3,
                        member: m,
                        signature: vec![m as u8; 64],
                    }),
                    ..Default::default()
                })
                .collect(),
        })),
    }
}

fn end(round: u64) -> v1::Task {
    v1::Task {
        kind: Some(v1::task::Kind::RoundEnd(v1::RoundEnd {
            round,
            success: true,
            message: String::new(),
        })),
    }
}

fn parts(t: &OutgoingTask) -> Vec<v1::Task> {
    (0..t.part_count())
        .map(|i| t.part(i).expect("in range").expect("readable"))
        .collect()
}

fn part_of(t: &v1::Task) -> &v1::TaskPart {
    match &t.kind {
        Some(v1::task::Kind::Part(p)) => p,
        other => panic!("not a part: {other:?}"),
    }
}

#[test]
fn small_tasks_stay_whole_and_large_ones_split_at_the_part_size() {
    let small = OutgoingTask::new(end(1));
    assert!(matches!(small, OutgoingTask::Whole(_)));
    assert_eq!(parts(&small), vec![end(1)]);
    assert!(small.part(1).is_none());

    let task = unmask(1000);
    let len = task.encoded_len();
    assert!(len > 4 * TASK_PART_BYTES, "{len}");
    let out = OutgoingTask::new(task.clone());
    assert!(matches!(out, OutgoingTask::Encoded { .. }));
    assert_eq!(out.encoded_len(), len);
    let ps = parts(&out);
    assert_eq!(ps.len(), len.div_ceil(TASK_PART_BYTES));
    let mut offset = 0u64;
    for p in &ps {
        let p = part_of(p);
        assert_eq!(p.offset, offset);
        assert_eq!(p.total_len, len as u64);
        assert!(p.data.len() <= TASK_PART_BYTES && !p.data.is_empty());
        offset += p.data.len() as u64;
    }
    assert_eq!(offset, len as u64);
    assert!(out.part(ps.len()).is_none());
    assert_eq!(out.to_task().expect("decodes"), task);
    // `whole` never splits, for tasks edited on the way out.
    assert_eq!(OutgoingTask::whole(task.clone()).part_count(), 1);
}

#[test]
fn a_stream_of_whole_tasks_and_parts_comes_back_as_the_tasks_sent() {
    let sent = [end(1), unmask(700), end(2), unmask(2000), unmask(3)];
    let mut r = Reassembly::default();
    let mut got = Vec::new();
    for t in &sent {
        for p in parts(&OutgoingTask::new(t.clone())) {
            if let Some(t) = r.push(p).expect("in order") {
                got.push(t);
            }
        }
    }
    assert_eq!(got, sent);
}

#[test]
fn parts_out_of_order_missing_or_lying_are_refused_and_the_next_task_still_arrives() {
    let out = OutgoingTask::new(unmask(1000));
    let ps = parts(&out);
    let total = out.encoded_len() as u64;

    // A skipped part.
    let mut r = Reassembly::default();
    assert!(r.push(ps[0].clone()).expect("first").is_none());
    let e = r.push(ps[2].clone()).expect_err("skipped");
    assert!(
        matches!(e, PartError::OutOfOrder { expected, offset, .. } if expected == TASK_PART_BYTES as u64 && offset == 2 * TASK_PART_BYTES as u64),
        "{e}"
    );
    // Refused, and the reassembly starts afresh.
    let mut done = None;
    for p in &ps {
        done = r.push(p.clone()).expect("afresh");
    }
    assert_eq!(done, Some(unmask(1000)));

    // A whole task in the middle of parts.
    let mut r = Reassembly::default();
    r.push(ps[0].clone()).expect("first");
    let e = r.push(end(9)).expect_err("interrupted");
    assert!(
        matches!(e, PartError::Interrupted { have, total_len } if have == TASK_PART_BYTES as u64 && total_len == total),
        "{e}"
    );

    // A part that changes the announced length, or runs past it.
    let mut r = Reassembly::default();
    r.push(ps[0].clone()).expect("first");
    let mut lying = ps[1].clone();
    if let Some(v1::task::Kind::Part(p)) = &mut lying.kind {
        p.total_len += 1;
    }
    assert!(matches!(r.push(lying), Err(PartError::OutOfOrder { .. })));
    let past = v1::Task {
        kind: Some(v1::task::Kind::Part(v1::TaskPart {
            total_len: 10,
            offset: 0,
            data: Bytes::from_static(&[0; 11]),
        })),
    };
    assert!(matches!(
        Reassembly::default().push(past),
        Err(PartError::OutOfOrder { len: 11, .. })
    ));

    // Announced lengths of zero or over the limit.
    for total_len in [0, MAX_TASK_BYTES + 1] {
        let p = v1::Task {
            kind: Some(v1::task::Kind::Part(v1::TaskPart {
                total_len,
                offset: 0,
                data: Bytes::from_static(&[0; 4]),
            })),
        };
        let e = Reassembly::default().push(p).expect_err("bad length");
        assert!(
            matches!(e, PartError::BadLength { total_len: t, .. } if t == total_len),
            "{e}"
        );
    }
}

#[test]
fn parts_that_decode_to_garbage_or_to_a_part_are_refused() {
    let garbage = v1::Task {
        kind: Some(v1::task::Kind::Part(v1::TaskPart {
            total_len: 3,
            offset: 0,
            data: Bytes::from_static(&[0xff, 0xff, 0xff]),
        })),
    };
    let e = Reassembly::default().push(garbage).expect_err("garbage");
    assert!(matches!(e, PartError::Decode(_)), "{e}");

    let inner = v1::Task {
        kind: Some(v1::task::Kind::Part(v1::TaskPart {
            total_len: 1,
            offset: 0,
            data: Bytes::from_static(&[1]),
        })),
    };
    let enc = Bytes::from(inner.encode_to_vec());
    let nested = v1::Task {
        kind: Some(v1::task::Kind::Part(v1::TaskPart {
            total_len: enc.len() as u64,
            offset: 0,
            data: enc,
        })),
    };
    let e = Reassembly::default().push(nested).expect_err("nested");
    assert!(e.to_string().contains("part again"), "{e}");
}

fn relayed(member: u32, cert_len: usize) -> v1::RelayedAdvert {
    v1::RelayedAdvert {
        advert: Some(v1::KeyAdvert {
            round: 5,
            member,
            enc_public: vec![member as u8; 32],
            mask_public: vec![!member as u8; 32],
            signature: vec![7; 64],
        }),
        verifying_key: vec![9; 32],
        certificate: vec![member as u8; cert_len],
        site: format!("site-{member}"),
    }
}

#[test]
fn neighbour_keys_from_pieces_decode_as_built() {
    // From none to enough adverts for many parts, with pieces of varied
    // sizes so parts start and end inside and across them; round 0 is the
    // field prost leaves out.
    for (round, n, cert) in [(0, 0, 0), (9, 1, 0), (300, 217, 504), (1 << 40, 40, 3000)] {
        let adverts: Vec<v1::RelayedAdvert> =
            (0..n).map(|m| relayed(m * 3, cert + m as usize)).collect();
        let pieces: Vec<AdvertPiece> = adverts.iter().map(AdvertPiece::new).collect();
        let expected = v1::Task {
            kind: Some(v1::task::Kind::NeighbourKeys(v1::NeighbourKeys {
                round,
                adverts,
            })),
        };
        let out = OutgoingTask::neighbour_keys(round, &pieces);
        assert_eq!(out.encoded_len(), expected.encoded_len(), "n = {n}");
        assert_eq!(out.to_task().expect("decodes"), expected, "n = {n}");
        let mut r = Reassembly::default();
        let mut whole = None;
        for p in parts(&out) {
            assert!(part_of(&p).data.len() <= TASK_PART_BYTES);
            whole = r.push(p).expect("in order");
        }
        assert_eq!(whole, Some(expected), "n = {n}");
    }
}

#[test]
fn a_part_inside_one_piece_shares_it() {
    let big = Bytes::from(vec![1u8; 3 * TASK_PART_BYTES]);
    let out = OutgoingTask::from_pieces(vec![big.clone(), Bytes::from_static(&[2; 5])]);
    assert_eq!(out.encoded_len(), big.len() + 5);
    let first = part_of(&out.part(0).expect("part 0").expect("readable"))
        .data
        .clone();
    assert_eq!(first.as_ptr(), big.as_ptr(), "a slice, not a copy");
    let last = part_of(&out.part(3).expect("part 3").expect("readable"))
        .data
        .clone();
    assert_eq!(&last[..], &[2; 5]);
    assert!(out.part(4).is_none());
}

/// An encoding held "elsewhere": in memory, or failing to read.
#[derive(Debug)]
struct Held(Option<Bytes>);

impl StoredEncoding for Held {
    fn read(&self, start: usize, end: usize) -> std::io::Result<Bytes> {
        match &self.0 {
            Some(b) => Ok(b.slice(start..end.min(b.len()))),
            None => Err(std::io::Error::other("disk gone")),
        }
    }
}

#[test]
fn a_stored_task_goes_in_parts_even_when_small_and_comes_back_whole() {
    for task in [end(4), unmask(1000)] {
        let bytes = Bytes::from(task.encode_to_vec());
        let out = OutgoingTask::stored(Arc::new(Held(Some(bytes.clone()))), bytes.len());
        assert_eq!(out.encoded_len(), bytes.len());
        assert_eq!(out.part_count(), bytes.len().div_ceil(TASK_PART_BYTES));
        assert!(out.whole_kind().is_none());
        let ps = parts(&out);
        assert!(
            ps.iter()
                .all(|p| part_of(p).total_len == bytes.len() as u64)
        );
        let mut r = Reassembly::default();
        let mut whole = None;
        for p in ps {
            whole = r.push(p).expect("reassembles");
        }
        assert_eq!(whole.as_ref(), Some(&task));
        assert_eq!(out.to_task().expect("decodes"), task);
        assert!(out.part(out.part_count()).is_none());
        assert_eq!(out, out.clone(), "the same place");
    }
}

#[test]
fn a_stored_task_that_cannot_be_read_back_says_so() {
    let task = unmask(1000);
    let len = task.encoded_len();
    let gone = OutgoingTask::stored(Arc::new(Held(None)), len);
    assert!(matches!(gone.part(0), Some(Err(PartError::Stored(ref e))) if e.contains("disk gone")));
    assert!(matches!(gone.to_task(), Err(PartError::Stored(_))));
    // Shorter than announced: refused, not sent short.
    let short = Bytes::from(task.encode_to_vec()).slice(..len - 10);
    let cut = OutgoingTask::stored(Arc::new(Held(Some(short))), len);
    let last = cut.part_count() - 1;
    assert!(
        matches!(cut.part(last), Some(Err(PartError::Stored(ref e))) if e.contains("read back"))
    );
    assert!(cut.part(0).expect("in range").is_ok());
}
