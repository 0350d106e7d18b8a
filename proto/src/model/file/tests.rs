use std::collections::HashMap;

use safetensors::tensor::TensorView;

use super::*;

type R = std::result::Result<(), Box<dyn std::error::Error>>;

/// A safetensors file of one tensor "w" of `dtype` holding `bytes`.
fn file_of(dtype: safetensors::Dtype, shape: Vec<usize>, bytes: &[u8]) -> Vec<u8> {
    let view = TensorView::new(dtype, shape, bytes);
    let views = view.map(|v| vec![("w", v)]).unwrap_or_default();
    safetensors::serialize(views, None::<HashMap<String, String>>).unwrap_or_default()
}

#[test]
fn f16_and_bf16_round_trip_through_f32_in_their_own_dtype() -> R {
    // Values exact in both half formats, and one that each rounds.
    let values = [1.0f32, -2.5, 0.125, 1024.0, 1.2345678];
    for (st, dtype) in [
        (safetensors::Dtype::F16, Dtype::F16),
        (safetensors::Dtype::BF16, Dtype::BF16),
    ] {
        let raw: Vec<u8> = match dtype {
            Dtype::F16 => values
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        };
        let bytes = file_of(st, vec![5], &raw);
        let m = Model::from_safetensors(&bytes)?;
        let t = m.get("w").ok_or("no tensor")?;
        assert_eq!(t.dtype, dtype);
        assert_eq!(&t.data[..4], &values[..4], "{dtype}: exact values");
        assert!(
            (t.data[4] - values[4]).abs() < 0.01,
            "{dtype}: {}",
            t.data[4]
        );
        // Written back byte for byte in the file's dtype.
        assert_eq!(m.to_safetensors(None)?, bytes, "{dtype}");
        // Arithmetic in f32 keeps the dtype; the result is rounded on write.
        let mut moved = m.clone();
        moved.add_scaled(&m, 0.5)?;
        let back = Model::from_safetensors(&moved.to_safetensors(None)?)?;
        assert_eq!(back.get("w").map(|t| t.dtype), Some(dtype));
        assert_eq!(back.get("w").map(|t| t.data[0]), Some(1.5));
        assert_eq!(m.zeros_like().get("w").map(|t| t.dtype), Some(dtype));
        assert_eq!(
            m.unflatten_like(&[0.0; 5])?.get("w").map(|t| t.dtype),
            Some(dtype)
        );
    }
    Ok(())
}

#[test]
fn a_value_beyond_f16_is_an_error_not_an_infinity() -> R {
    let mut m = Model::new();
    m.insert(
        "big",
        Tensor::new(vec![2], vec![1.0, 70000.0])?.with_dtype(Dtype::F16),
    );
    let err = m
        .to_safetensors(None)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        err.as_ref()
            .is_err_and(|e| e.contains("'big'") && e.contains("F16")),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn other_dtypes_are_refused_by_name() {
    let bytes = file_of(safetensors::Dtype::I64, vec![2], &[0u8; 16]);
    let err = Model::from_safetensors(&bytes);
    assert!(
        matches!(&err, Err(ModelError::UnsupportedDtype { name, dtype }) if name == "w" && dtype == "I64"),
        "{err:?}"
    );
}

#[test]
fn dtype_mismatch_is_named() -> R {
    let mut a = Model::new();
    a.insert("w", Tensor::new(vec![1], vec![1.0])?);
    let mut b = a.clone();
    b.insert(
        "w",
        Tensor::new(vec![1], vec![1.0])?.with_dtype(Dtype::BF16),
    );
    let err = a.check_same_layout_and_dtypes(&b);
    assert!(
        matches!(&err, Err(ModelError::DtypeMismatch { name, expected: Dtype::F32, found: Dtype::BF16 }) if name == "w"),
        "{err:?}"
    );
    a.check_same_layout_and_dtypes(&a.clone())?;
    Ok(())
}

/// Writes `m` to a file in `dir` and reads it back as a model file.
fn read_back(dir: &Path, m: &Model, limit: u64) -> Result<ModelFile> {
    let path = dir.join("m.safetensors");
    std::fs::write(&path, m.to_safetensors(None)?).map_err(|e| ModelError::File(e.to_string()))?;
    ModelFile::read(&path, limit)
}

#[test]
fn model_files_are_checked_with_messages_naming_the_problem() -> R {
    let dir = tempfile::tempdir()?;
    let mut good = Model::new();
    good.insert("conv.weight", Tensor::new(vec![2, 2], vec![0.5; 4])?);
    good.insert(
        "fc.bias",
        Tensor::new(vec![3], vec![0.0; 3])?.with_dtype(Dtype::F16),
    );
    let f = read_back(dir.path(), &good, 1 << 20)?;
    assert_eq!(f.model, good);
    let bytes = std::fs::read(dir.path().join("m.safetensors"))?;
    assert_eq!(f.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));

    // Missing file.
    let err = ModelFile::read(&dir.path().join("nope.safetensors"), 1 << 20);
    let msg = err.map(|_| ()).map_err(|e| e.to_string());
    assert!(
        msg.as_ref()
            .is_err_and(|e| e.contains("nope.safetensors") && e.contains("does not exist")),
        "{msg:?}"
    );
    // Not a safetensors file.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors")?;
    let msg = ModelFile::read(&junk, 1 << 20)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        msg.as_ref().is_err_and(|e| e.contains("junk.safetensors") && e.contains("not a valid safetensors")),
        "{msg:?}"
    );
    // A NaN, named with its tensor.
    let mut nan = good.clone();
    nan.insert("fc.weight", Tensor::new(vec![2], vec![1.0, f32::NAN])?);
    let msg = read_back(dir.path(), &nan, 1 << 20)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        msg.as_ref()
            .is_err_and(|e| e.contains("'fc.weight'") && e.contains("element 1")),
        "{msg:?}"
    );
    // Over the limit: the largest tensor is named.
    let mut big = good.clone();
    big.insert("embedding", Tensor::zeros(vec![100, 10]));
    let msg = read_back(dir.path(), &big, 1000)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        msg.as_ref()
            .is_err_and(|e| e.contains("'embedding'") && e.contains("max_model_bytes")),
        "{msg:?}"
    );
    // Empty: no tensors, or only empty ones.
    assert!(matches!(
        read_back(dir.path(), &Model::new(), 1000),
        Err(ModelError::Empty)
    ));
    let mut hollow = Model::new();
    hollow.insert("w", Tensor::zeros(vec![0, 3]));
    assert!(matches!(
        read_back(dir.path(), &hollow, 1000),
        Err(ModelError::Empty)
    ));
    // An unsupported dtype, from a file.
    let i64s = dir.path().join("i64.safetensors");
    std::fs::write(&i64s, file_of(safetensors::Dtype::I64, vec![2], &[0u8; 16]))?;
    let msg = ModelFile::read(&i64s, 1 << 20)
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(
        msg.as_ref()
            .is_err_and(|e| e.contains("'w'") && e.contains("I64")),
        "{msg:?}"
    );
    Ok(())
}
