use super::*;
use proptest::prelude::*;

#[test]
fn known_answer_at_24_bits() -> Result<(), PackError> {
    // -1 and 0xABCD_EF12 keep only their low 24 bits.
    let v: Vec<u32> = vec![1, u32::MAX, 0x12_3456, 0xABCD_EF12];
    let bytes = pack(&v, 24);
    assert_eq!(
        bytes,
        [
            0x01, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x56, 0x34, 0x12, 0x12, 0xEF, 0xCD
        ]
    );
    let back: Vec<u32> = unpack(&bytes, 24, 4)?;
    assert_eq!(back, [1, 0xFF_FFFF, 0x12_3456, 0xCD_EF12]);
    Ok(())
}

#[test]
fn known_answer_at_13_bits() -> Result<(), PackError> {
    // Bits [13i, 13i + 13) of a little-endian bit stream; 65 bits → 9 bytes.
    let v: Vec<u64> = vec![1, 0x1FFF, 0x0A5A, 3, 0xFFFF_E001];
    let bytes = pack(&v, 13);
    assert_eq!(
        bytes,
        [0x01, 0xE0, 0xFF, 0x6B, 0xA9, 0x01, 0x10, 0x00, 0x00]
    );
    let back: Vec<u64> = unpack(&bytes, 13, 5)?;
    assert_eq!(back, [1, 0x1FFF, 0x0A5A, 3, 1]);
    Ok(())
}

#[test]
fn a_wrong_length_names_bytes_expected_and_received() {
    let e = unpack::<u32>(&[0; 11], 24, 4).unwrap_err();
    assert_eq!(
        e,
        PackError::Length {
            expected: 12,
            received: 11,
            elements: 4,
            bits: 24,
            offset: 0,
        }
    );
    assert!(e.to_string().contains("11 bytes, expected 12"), "{e}");
    let p = Packing::new(Ring::U32, 24, 10, 14).unwrap_or(Packing::plain(Ring::U32, 0));
    // 30 packed bytes + 4 × 4 tail bytes.
    assert_eq!(p.total_bytes(), 46);
    assert!(matches!(
        p.unpack(&[0; 45]),
        Err(PackError::Length {
            expected: 46,
            received: 45,
            ..
        })
    ));
}

#[test]
fn widths_outside_8_to_the_ring_are_refused() {
    assert!(Packing::new(Ring::U32, 7, 1, 1).is_err());
    assert!(Packing::new(Ring::U32, 33, 1, 1).is_err());
    assert!(Packing::new(Ring::U64, 64, 1, 1).is_ok());
    assert!(Packing::new(Ring::U64, 20, 3, 2).is_err());
}

#[test]
fn boundaries_are_whole_bytes_and_whole_elements() -> Result<(), PackError> {
    let p = Packing::new(Ring::U32, 13, 20, 24)?;
    // 20 × 13 bits = 32.5 → 33 head bytes, then 4 tail elements.
    assert_eq!(p.total_bytes(), 33 + 16);
    assert_eq!(p.bytes_at(8), Some(13));
    assert_eq!(p.bytes_at(3), None);
    assert_eq!(p.bytes_at(20), Some(33));
    assert_eq!(p.bytes_at(22), Some(41));
    assert_eq!(p.elements_at(13), Some(8));
    assert_eq!(p.elements_at(14), None);
    assert_eq!(p.elements_at(33), Some(20));
    assert_eq!(p.elements_at(37), Some(21));
    assert_eq!(p.elements_at(38), None);
    assert_eq!(p.elements_at(50), None);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// pack → unpack-and-add is the identity mod 2^b, for every width,
    /// length and offset into a larger accumulator.
    #[test]
    fn pack_unpack_round_trip(
        bits in 8u32..=64,
        v in proptest::collection::vec(any::<u64>(), 0..80),
        offset in 0usize..20,
        base in any::<u64>(),
    ) {
        let bytes = pack(&v, bits);
        prop_assert_eq!(bytes.len(), packed_bytes(v.len(), bits));
        let m = mask(bits);
        let mut acc = vec![base; offset + v.len() + 3];
        unpack_add(&mut acc[offset..offset + v.len()], &bytes, bits)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, a) in acc.iter().enumerate() {
            let want = match i.checked_sub(offset).and_then(|j| v.get(j)) {
                Some(x) => base.wrapping_add(x & m),
                None => base,
            };
            prop_assert_eq!(*a, want, "element {}", i);
        }
        if bits <= 32 {
            let v32: Vec<u32> = v.iter().map(|&x| x as u32).collect();
            let back: Vec<u32> = unpack(&pack(&v32, bits), bits, v32.len())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let want: Vec<u32> = v32.iter().map(|&x| (u64::from(x) & m) as u32).collect();
            prop_assert_eq!(back, want);
        }
    }

    /// The packed bytes are the module docs' bit stream exactly (element
    /// `i` at bits `[i·b, (i+1)·b)`, little-endian), built here one bit at a
    /// time, for every width and for lengths on and off a group of eight;
    /// and reading them back adds each element's low `b` bits.
    #[test]
    fn packed_bytes_are_the_documented_bit_stream(
        bits in 8u32..=64,
        v in proptest::collection::vec(any::<u64>(), 0..40),
    ) {
        let b = bits as usize;
        let mut want = vec![0u8; packed_bytes(v.len(), bits)];
        for (i, &x) in v.iter().enumerate() {
            for k in 0..b {
                if x >> k & 1 == 1 {
                    want[(i * b + k) / 8] |= 1 << ((i * b + k) % 8);
                }
            }
        }
        prop_assert_eq!(&pack(&v, bits), &want);
        let mut acc = vec![1u64; v.len()];
        unpack_add(&mut acc, &want, bits).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (i, (a, x)) in acc.iter().zip(&v).enumerate() {
            prop_assert_eq!(*a, (x & mask(bits)).wrapping_add(1), "element {}", i);
        }
        if bits <= 32 {
            let v32: Vec<u32> = v.iter().map(|&x| x as u32).collect();
            prop_assert_eq!(&pack(&v32, bits), &want);
        }
    }

    /// A vector sent in chunks and added at their offsets equals the vector
    /// (packed slots mod 2^b), for both rings.
    #[test]
    fn chunks_add_up_to_the_vector(
        bits in 8u32..=32,
        v in proptest::collection::vec(any::<u32>(), 0..200),
        packed_frac in 0usize..=100,
        max_bytes in 1usize..64,
    ) {
        let packed = v.len() * packed_frac / 100;
        let p = Packing::new(Ring::U32, bits, packed, v.len())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut sum = RingVec::zeros(Ring::U32, v.len());
        let mut sent = 0;
        for r in p.chunks(max_bytes) {
            prop_assert_eq!(p.bytes_at(r.start), Some(sent));
            let bytes = p.encode(&v, r.clone());
            sent += bytes.len();
            p.add_into(&mut sum, r.start, &bytes)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(sent, p.total_bytes());
        let m = mask(bits) as u32;
        let want: Vec<u32> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| if i < packed { x & m } else { x })
            .collect();
        prop_assert_eq!(sum.as_u32(), Some(&want[..]));
        let whole = p.encode(&v, 0..v.len());
        prop_assert_eq!(p.unpack(&whole).ok(), Some(RingVec::from(want)));
    }
}
