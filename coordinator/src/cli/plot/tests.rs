use super::*;
use crate::checkpoint::{self, Manifest};
use confide_proto::model::{Model, Tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn record(round: u64, kind: &str, success: bool, acc: Option<f64>) -> RoundRecord {
    RoundRecord {
        round,
        kind: kind.into(),
        success,
        message: if success { "" } else { "stage deadline" }.into(),
        accuracy: acc,
        loss: acc.map(|a| 1.0 - a),
        ..Default::default()
    }
}

/// A federation's history: statistics, five training rounds of which one
/// failed, the evaluation; five successful rounds measured the model.
fn history() -> Vec<RoundRecord> {
    vec![
        record(1, "statistics", true, None),
        record(2, "train", true, Some(0.55)),
        record(3, "train", true, Some(0.81)),
        record(4, "train", false, None),
        record(5, "train", true, Some(0.90)),
        record(6, "train", true, Some(0.93)),
        record(7, "evaluate", true, Some(0.94)),
    ]
}

/// The history as `confide rounds --checkpoints DIR` reads it: saved with a
/// real checkpoint and read back from the latest one.
fn history_from_checkpoint(dir: &Path) -> Result<Vec<RoundRecord>, Box<dyn std::error::Error>> {
    let mut model = Model::new();
    model.insert("weight", Tensor::new(vec![1, 2], vec![0.5, -1.0])?);
    let history = history();
    let manifest = Manifest {
        format: 1,
        round: 7,
        model_round: 6,
        next_round: 8,
        completed_train_rounds: 4,
        suite: "intl".into(),
        config_hash: "test".into(),
        optimiser: "fedavg".into(),
        optimiser_state: None,
        preprocess: None,
        tensors: vec![],
        history: history.clone(),
        objects: vec![],
        lease_token: None,
    };
    checkpoint::save(dir, &manifest, &model.to_safetensors(None)?, None)?;
    let read =
        crate::cli::latest_history(&checkpoint::LocalStore::new(dir))?.ok_or("no checkpoint")?;
    // Not compared whole: the manifest's JSON may move a float by an ulp.
    let shape = |h: &[RoundRecord]| -> Vec<(u64, bool, bool)> {
        h.iter()
            .map(|r| (r.round, r.success, r.accuracy.is_some()))
            .collect()
    };
    assert_eq!(shape(&read), shape(&history));
    Ok(read)
}

fn successful_with_accuracy(h: &[RoundRecord]) -> Vec<u64> {
    h.iter()
        .filter(|r| r.success && r.accuracy.is_some())
        .map(|r| r.round)
        .collect()
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

#[test]
fn svg_from_a_checkpoint_history_has_one_point_per_successful_round() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let history = history_from_checkpoint(&tmp.path().join("checkpoints"))?;
    let out = tmp.path().join("curve.svg");
    plot_file(&history, &out)?;

    let text = std::fs::read_to_string(&out)?;
    let doc = roxmltree::Document::parse(&text)?;
    let svg = doc.root_element();
    assert_eq!(svg.tag_name().name(), "svg");
    assert_eq!(svg.attribute("width"), Some("800"));
    assert_eq!(svg.attribute("height"), Some("500"));
    assert_eq!(svg.attribute("viewBox"), Some("0 0 800 500"));

    // The points are the picture's only circles: one per successful round
    // with a measurement in each panel, left to right in round order.
    let circles: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .collect();
    let expected = successful_with_accuracy(&history);
    assert_eq!(expected, [2, 3, 5, 6, 7]);
    for colour in [ACCURACY_COLOUR, LOSS_COLOUR] {
        let xs: Vec<f64> = circles
            .iter()
            .filter(|n| n.attribute("fill") == Some(hex(colour).as_str()))
            .map(|n| Ok(n.attribute("cx").ok_or("circle without cx")?.parse()?))
            .collect::<Result<_, Box<dyn std::error::Error>>>()?;
        assert_eq!(xs.len(), expected.len(), "points of {colour:?}");
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "points in round order");
    }
    assert_eq!(circles.len(), 2 * expected.len());

    // The failed round: a cross (two lines) in each panel and one in each
    // legend.
    let failed = history.iter().filter(|r| !r.success).count();
    let red_lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("line") && n.attribute("stroke") == Some(&hex(FAILED_COLOUR)))
        .count();
    assert_eq!(red_lines, 2 * 2 * failed + 2 * 2);

    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for label in ["held-out accuracy", "held-out loss", "failed round"] {
        assert!(texts.iter().any(|t| t.contains(label)), "no {label:?} text");
    }
    Ok(())
}

#[test]
fn png_from_a_checkpoint_history_is_800_by_500_and_drawn() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let history = history_from_checkpoint(&tmp.path().join("checkpoints"))?;
    let out = tmp.path().join("curve.PNG");
    plot_file(&history, &out)?;

    let bytes = std::fs::read(&out)?;
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
    let mut pixels = vec![0; reader.output_buffer_size().ok_or("PNG too large")?];
    let frame = reader.next_frame(&mut pixels)?;
    assert_eq!((frame.width, frame.height), (WIDTH, HEIGHT));
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    let rgb: Vec<[u8; 3]> = pixels[..frame.buffer_size()]
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let has = |c: RGBColor| rgb.contains(&[c.0, c.1, c.2]);
    assert!(has(ACCURACY_COLOUR) && has(LOSS_COLOUR) && has(FAILED_COLOUR));
    // The title's text, drawn with the embedded font: dark pixels in the
    // top rows.
    let title_ink = rgb[..(WIDTH * 25) as usize]
        .iter()
        .filter(|p| p.iter().all(|&v| v < 128))
        .count();
    assert!(title_ink > 100, "title not drawn ({title_ink} dark pixels)");
    Ok(())
}

#[test]
fn unknown_extensions_and_empty_histories_are_refused() {
    for name in ["curve.jpg", "curve", "curve.svg.gz"] {
        let err = plot_file(&history(), Path::new(name)).err();
        let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
        assert!(
            matches!(err, Some(PlotError::Format { .. })) && msg.contains(".svg or .png"),
            "{name}: {msg}"
        );
    }
    assert!(matches!(
        render(&[], Format::Svg),
        Err(PlotError::EmptyHistory)
    ));
}

#[test]
fn curves_skip_failures_statistics_and_non_finite_values() -> TestResult {
    let mut h = history();
    h.push(record(8, "evaluate", true, Some(f64::NAN)));
    let c = Curves::of(&h)?;
    assert_eq!(
        c.accuracy.iter().map(|p| p.0).collect::<Vec<_>>(),
        [2, 3, 5, 6, 7]
    );
    assert_eq!(c.failed, [4]);
    assert_eq!(c.x_end, 9);
    assert!((c.loss_top - 0.45 * 1.1).abs() < 1e-12);
    Ok(())
}

#[test]
fn extreme_values_from_a_file_still_draw() -> TestResult {
    let mut h = vec![
        record(u64::MAX, "train", true, Some(0.5)),
        record(3, "train", true, Some(-1.0)),
        record(4, "train", false, Some(0.7)),
        record(5, "train", true, Some(0.6)),
    ];
    h[0].loss = Some(1e90);
    // An axis up to f64::MAX never got its ticks: such values are left out.
    h[3].loss = Some(f64::MAX);
    let c = Curves::of(&h)?;
    assert_eq!(c.accuracy, [(5, 0.6), (u64::MAX, 0.5)]);
    assert_eq!(c.loss, [(3, 2.0), (u64::MAX, 1e90)]);
    assert_eq!(c.x_end, u64::MAX);
    for format in [Format::Svg, Format::Png] {
        assert!(!render(&h, format)?.is_empty());
    }
    Ok(())
}
