use std::collections::HashMap;

use super::*;

fn sample() -> Result<Model> {
    let mut m = Model::new();
    m.insert(
        "weight",
        Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., 6.])?,
    );
    m.insert("bias", Tensor::new(vec![2], vec![-1., -2.])?);
    Ok(m)
}

#[test]
fn flatten_uses_name_order_and_round_trips() -> Result<()> {
    let m = sample()?;
    assert_eq!(m.num_params(), 8);
    // "bias" sorts before "weight".
    assert_eq!(m.flatten(), vec![-1., -2., 1., 2., 3., 4., 5., 6.]);
    let back = m.unflatten_like(&m.flatten())?;
    assert_eq!(back, m);
    let other = m.unflatten_like(&[0.5; 8])?;
    assert_eq!(
        other.get("weight").map(|t| t.shape.clone()),
        Some(vec![2, 3])
    );
    assert_eq!(other.flatten(), vec![0.5; 8]);
    Ok(())
}

#[test]
fn unflatten_rejects_wrong_length() -> Result<()> {
    let err = sample()?.unflatten_like(&[0.0; 7]);
    assert!(matches!(
        err,
        Err(ModelError::FlatLength {
            expected: 8,
            found: 7
        })
    ));
    Ok(())
}

#[test]
fn tensor_new_checks_size() {
    let err = Tensor::new(vec![2, 2], vec![0.0; 3]).map(|_| ());
    assert!(
        err.as_ref()
            .is_err_and(|e| e.to_string().contains("needs 4 values, got 3")),
        "{err:?}"
    );
}

#[test]
fn arithmetic_checks_layout() -> Result<()> {
    let a = sample()?;
    let mut b = sample()?;
    b.scale(2.0);
    let d = b.sub(&a)?;
    assert_eq!(d, a);
    let mut c = a.zeros_like();
    c.add_scaled(&a, 3.0)?;
    assert_eq!(
        c.flatten(),
        a.flatten().iter().map(|v| v * 3.0).collect::<Vec<_>>()
    );
    let mut wrong = sample()?;
    wrong.insert("bias", Tensor::zeros(vec![3]));
    assert!(matches!(
        a.sub(&wrong),
        Err(ModelError::ShapeMismatch { .. })
    ));
    wrong.tensors.remove("bias");
    assert!(matches!(
        a.sub(&wrong),
        Err(ModelError::LayoutMismatch { .. })
    ));
    Ok(())
}

#[test]
fn safetensors_round_trip_keeps_names_shapes_values_and_metadata() -> Result<()> {
    let mut m = Model::new();
    m.insert(
        "weight",
        Tensor::new(
            vec![2, 3],
            vec![1.0, -2.5, 3.25, 0.0, f32::MIN_POSITIVE, 7.0],
        )?,
    );
    m.insert("bias", Tensor::new(vec![2], vec![0.5, -0.5])?);
    let meta: HashMap<String, String> = [("round".to_string(), "4".to_string())].into();
    let bytes = m.to_safetensors(Some(meta.clone()))?;
    let back = Model::from_safetensors(&bytes)?;
    assert_eq!(back, m);
    assert_eq!(Model::safetensors_metadata(&bytes)?, meta);
    assert!(Model::from_safetensors(&bytes[..bytes.len() - 1]).is_err());
    Ok(())
}

#[test]
fn spec_counts_without_building_and_names_layers() -> Result<()> {
    let lr = ModelSpec::new(ModelKind::Logistic, 30, vec![8], 2)?;
    assert!(
        lr.hidden.is_empty(),
        "logistic regression has no hidden layers"
    );
    assert_eq!(lr.num_params(), 31);
    assert_eq!(lr.init_seeded(1).num_params(), 31);
    let lr3 = ModelSpec::new(ModelKind::Logistic, 4, vec![], 3)?;
    assert_eq!(lr3.num_params(), 3 * 4 + 3);
    let mlp = ModelSpec::new(ModelKind::Mlp, 64, vec![32, 16], 10)?;
    assert_eq!(mlp.num_params(), 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10);
    let m = mlp.init_seeded(7);
    assert_eq!(m.num_params(), mlp.num_params());
    assert_eq!(
        m.get("layer1.weight").map(|t| t.shape.clone()),
        Some(vec![16, 32])
    );
    assert!(
        m.get("layer2.bias")
            .is_some_and(|t| t.data.iter().all(|&b| b == 0.0))
    );
    // Seeded: the same model on every fresh start, another with another seed.
    assert_eq!(mlp.init_seeded(7), m);
    assert_ne!(mlp.init_seeded(8), m);
    Ok(())
}

#[test]
fn bad_specs_and_kinds_are_refused_by_name() {
    assert!(ModelSpec::new(ModelKind::Mlp, 4, vec![], 2).is_err());
    assert!(ModelSpec::new(ModelKind::Mlp, 4, vec![3, 0], 2).is_err());
    assert!(ModelSpec::new(ModelKind::Logistic, 0, vec![], 2).is_err());
    assert!(ModelSpec::new(ModelKind::Logistic, 3, vec![], 1).is_err());
    assert_eq!("mlp".parse::<ModelKind>(), Ok(ModelKind::Mlp));
    assert_eq!("logistic".parse::<ModelKind>(), Ok(ModelKind::Logistic));
    let e = "cnn".parse::<ModelKind>();
    assert!(e.is_err_and(|e| e.to_string().contains("unknown model kind 'cnn'")));
}

/// The initial weights are part of every checkpoint's lineage: these digests
/// of `init_seeded(..).to_safetensors(None)` were taken from the trainers that
/// built the initial model before it moved here, so a resumed federation and a
/// fresh one started from the same seed stay byte-identical.
#[test]
fn seeded_init_is_byte_identical_to_the_pinned_digests() -> Result<()> {
    use sha2::{Digest, Sha256};
    let cases = [
        (
            ModelKind::Logistic,
            30,
            vec![],
            2,
            0,
            "ed093f409eaec772ca2e3c9606c573e264835538128f2e53820de88fa87a460c",
        ),
        (
            ModelKind::Mlp,
            64,
            vec![64],
            10,
            7,
            "97e5e7afc658b96f3c5dbef7dbd19f68a7cf8ac3fbf52e589275cf95d98a4899",
        ),
        (
            ModelKind::Mlp,
            30,
            vec![16, 8],
            2,
            3,
            "873180428c97c227550f69bafd1a3103438cf68f9a6d31387e19873e77f10c60",
        ),
        (
            ModelKind::Logistic,
            30,
            vec![],
            3,
            3,
            "76ff067155d3fa8f88df9dda678f6fe8ce3da9e6d6fd3c4d1cc54419b51f0921",
        ),
    ];
    for (kind, features, hidden, classes, seed, want) in cases {
        let spec = ModelSpec::new(kind, features, hidden, classes)?;
        let bytes = spec.init_seeded(seed).to_safetensors(None)?;
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            want,
            "{kind} seed {seed}"
        );
    }
    Ok(())
}

/// The bytes `safetensors::serialize` gives for `m` (the codec before it
/// streamed), to check the streamed writer against.
fn reference_bytes(m: &Model, meta: Option<HashMap<String, String>>) -> Vec<u8> {
    let encoded: Vec<(String, Tensor, Vec<u8>)> = m
        .tensors
        .iter()
        .map(|(n, t)| {
            let mut b = Vec::new();
            t.dtype
                .encode_into(n, 0, &t.data, &mut b)
                .map(|()| (n.clone(), t.clone(), b))
        })
        .collect::<Result<_>>()
        .unwrap_or_default();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = encoded
        .iter()
        .filter_map(|(n, t, b)| {
            let v = safetensors::tensor::TensorView::new(t.dtype.st(), t.shape.clone(), b).ok()?;
            Some((n.clone(), v))
        })
        .collect();
    safetensors::serialize(views, meta).unwrap_or_default()
}

#[test]
fn streamed_safetensors_are_the_bytes_safetensors_writes() -> Result<()> {
    let mut m = Model::new();
    let vals = |n: usize| (0..n).map(|i| i as f32 * 0.25 - 3.0).collect::<Vec<f32>>();
    // More than one write piece, every dtype, names that sort differently
    // from the dtype order.
    m.insert(
        "a.half",
        Tensor::new(vec![3, 5], vals(15))?.with_dtype(Dtype::F16),
    );
    m.insert("b.big", Tensor::new(vec![70_000], vals(70_000))?);
    m.insert(
        "c.brain",
        Tensor::new(vec![4], vals(4))?.with_dtype(Dtype::BF16),
    );
    m.insert("d.empty", Tensor::new(vec![0], vec![])?);
    for meta in [
        None,
        Some(HashMap::from([("round".to_string(), "7".to_string())])),
    ] {
        let want = reference_bytes(&m, meta.clone());
        assert!(!want.is_empty());
        assert_eq!(m.to_safetensors(meta.clone())?, want);
        let layout = m.safetensors_layout(meta)?;
        assert_eq!(layout.len(), want.len() as u64);
        let mut out = Vec::new();
        assert_eq!(layout.write_to(&mut out)?, want.len() as u64);
        assert_eq!(out, want);
    }
    assert_eq!(Model::from_safetensors(&m.to_safetensors(None)?)?, m);
    Ok(())
}

#[test]
fn a_streamed_write_refuses_a_value_its_dtype_cannot_hold() -> Result<()> {
    let mut m = Model::new();
    m.insert(
        "h",
        Tensor::new(vec![2], vec![1.0, 1e6])?.with_dtype(Dtype::F16),
    );
    let e = m.to_safetensors(None).err().map(|e| e.to_string());
    assert!(
        e.as_deref()
            .is_some_and(|e| e.contains("tensor 'h' element 1") && e.contains("F16")),
        "{e:?}"
    );
    assert!(Dtype::F16.check_fits("h", 1, 1e6).is_err());
    assert!(Dtype::F16.check_fits("h", 1, f32::INFINITY).is_ok());
    assert!(Dtype::F32.check_fits("h", 1, f32::MAX).is_ok());
    Ok(())
}

#[test]
fn an_image_serves_every_byte_range_of_the_file() -> Result<()> {
    let mut m = Model::new();
    let vals = |n: usize| {
        (0..n)
            .map(|i| (i % 97) as f32 * 0.5 - 7.0)
            .collect::<Vec<f32>>()
    };
    m.insert(
        "a",
        Tensor::new(vec![3, 7], vals(21))?.with_dtype(Dtype::F16),
    );
    m.insert("b", Tensor::new(vec![1000], vals(1000))?);
    m.insert("c", Tensor::new(vec![5], vals(5))?.with_dtype(Dtype::BF16));
    let file = m.to_safetensors(None)?;
    let image = ModelImage::new(m.clone())?;
    assert_eq!(image.len(), file.len() as u64);
    assert_eq!(image.to_vec()?, file);
    let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&file).into();
    assert_eq!(image.sha256(), sha);
    // Ranges that start and end mid-header, mid-element and across tensors.
    let n = file.len();
    for step in [1, 3, 7, 64, 1001] {
        let mut joined = Vec::new();
        let mut a = 0;
        while a < n {
            let b = (a + step).min(n);
            let part = image.range(a as u64, b as u64)?;
            assert_eq!(part, &file[a..b], "range {a}..{b}");
            joined.extend_from_slice(&part);
            a = b;
        }
        assert_eq!(joined, file);
    }
    assert!(image.range(0, n as u64 + 1).is_err());
    assert!(image.range(5, 4).is_err());
    assert!(image.range(n as u64, n as u64)?.is_empty());
    Ok(())
}
