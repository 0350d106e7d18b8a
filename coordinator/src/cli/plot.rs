//! `confide rounds --plot FILE` and `confide demo --plot FILE`: the learning
//! curve of a round history as an SVG or PNG picture.
//!
//! Two panels over the same x axis, the round id: held-out accuracy above,
//! held-out loss below. The point at round r is what round r measured, which
//! is the model that round *started from* (the model after training round
//! `model_round`), so the last point, the evaluation round's, is the final
//! model. Only successful rounds with a measurement get a point; failed rounds
//! get a red cross at the bottom of both panels. The picture is
//! [`WIDTH`]×[`HEIGHT`] pixels.
//!
//! Text is laid out (and, in a PNG, drawn) with a font compiled into the
//! binary, so plotting needs no system fonts or font libraries.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::checkpoint::RoundRecord;

/// Width of the picture, in pixels (SVG user units).
pub const WIDTH: u32 = 800;
/// Height of the picture, in pixels (SVG user units).
pub const HEIGHT: u32 = 500;

/// DejaVu Sans (Bitstream Vera licence, `coordinator/assets/`).
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// The family the font is registered as; plotters' default family, and what
/// an SVG names, so viewers fall back to their own sans-serif.
const FAMILY: &str = "sans-serif";

const ACCURACY_COLOUR: RGBColor = RGBColor(31, 119, 180);
const LOSS_COLOUR: RGBColor = RGBColor(255, 127, 14);
const FAILED_COLOUR: RGBColor = RGBColor(214, 39, 40);
const POINT_RADIUS: u32 = 3;
/// Far above any real accuracy or loss (a diverged model's included), far
/// below where the axis arithmetic overflows.
const PLOTTABLE_MAX: f64 = 1e100;

/// Picture formats, chosen by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `.svg`: text stays text, the viewer's font draws it.
    Svg,
    /// `.png`: 8-bit RGB.
    Png,
}

impl Format {
    /// The format `path`'s extension names (case-insensitive).
    pub fn of_path(path: &Path) -> Result<Self, PlotError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("svg") => Ok(Self::Svg),
            Some("png") => Ok(Self::Png),
            _ => Err(PlotError::Format {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// Why no picture was made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The file name asks for a format we do not write.
    #[error("cannot plot to {path}: the file name must end in .svg or .png")]
    Format {
        /// The file asked for.
        path: PathBuf,
    },
    /// Nothing ran yet.
    #[error("nothing to plot: the round history is empty")]
    EmptyHistory,
    /// The embedded font did not parse (a broken build, not a user error).
    #[error("the embedded plot font could not be loaded")]
    Font,
    /// plotters failed to draw.
    #[error("drawing the plot: {0}")]
    Draw(String),
    /// PNG encoding failed.
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
    /// The picture could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Draw `history` into `path`, in the format its extension names.
pub fn plot_file(history: &[RoundRecord], path: &Path) -> Result<(), PlotError> {
    let bytes = render(history, Format::of_path(path)?)?;
    std::fs::write(path, bytes).map_err(|source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Draw `history` as the bytes of a `format` file.
pub fn render(history: &[RoundRecord], format: Format) -> Result<Vec<u8>, PlotError> {
    let curves = Curves::of(history)?;
    register_font()?;
    match format {
        Format::Svg => {
            let mut svg = String::new();
            draw(
                SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area(),
                &curves,
            )?;
            Ok(svg.into_bytes())
        }
        Format::Png => {
            let mut rgb = vec![0u8; WIDTH as usize * HEIGHT as usize * 3];
            let backend =
                BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (WIDTH, HEIGHT))
                    .map_err(|e| PlotError::Draw(e.to_string()))?;
            draw(backend.into_drawing_area(), &curves)?;
            encode_png(&rgb)
        }
    }
}

/// plotters looks fonts up by family in a process-wide table; fill it once.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

fn encode_png(rgb: &[u8]) -> Result<Vec<u8>, PlotError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(out)
}

/// What the panels show, taken from the history.
#[derive(Debug, PartialEq)]
struct Curves {
    /// (round, accuracy) of successful rounds that measured it, by round.
    accuracy: Vec<(u64, f64)>,
    /// (round, loss), likewise.
    loss: Vec<(u64, f64)>,
    /// Rounds that failed.
    failed: Vec<u64>,
    /// One past the last round: the x axis runs 0..=last+1 so no point sits
    /// on the frame.
    x_end: u64,
    /// Top of the loss axis.
    loss_top: f64,
}

impl Curves {
    fn of(history: &[RoundRecord]) -> Result<Self, PlotError> {
        let last = history
            .iter()
            .map(|r| r.round)
            .max()
            .ok_or(PlotError::EmptyHistory)?;
        let mut rounds: Vec<&RoundRecord> = history.iter().collect();
        rounds.sort_by_key(|r| r.round);
        // Values from a checkpoint file are not trusted: accuracy and loss
        // are never negative or NaN, and plotters' tick search never ends on
        // an axis whose span overflows, so absurdly large values are left out.
        let plottable = |v: &f64| (0.0..=PLOTTABLE_MAX).contains(v);
        let series = |get: fn(&RoundRecord) -> Option<f64>| -> Vec<(u64, f64)> {
            rounds
                .iter()
                .filter(|r| r.success)
                .filter_map(|r| get(r).filter(plottable).map(|v| (r.round, v)))
                .collect()
        };
        let accuracy = series(|r| r.accuracy);
        let loss = series(|r| r.loss);
        let loss_top = loss.iter().map(|p| p.1).fold(0.0, f64::max);
        Ok(Self {
            accuracy,
            loss,
            failed: rounds
                .iter()
                .filter(|r| !r.success)
                .map(|r| r.round)
                .collect(),
            x_end: last.saturating_add(1),
            // An axis even with no loss.
            loss_top: if loss_top > 0.0 {
                headroom(loss_top, 1.1)
            } else {
                1.0
            },
        })
    }
}

/// `top` raised by `factor` so the highest point clears the frame, unless
/// that overflows.
fn headroom(top: f64, factor: f64) -> f64 {
    Some(top * factor).filter(|t| t.is_finite()).unwrap_or(top)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Curves) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(e.to_string());
    root.fill(&WHITE).map_err(e)?;
    let body = root
        .titled(
            "Confide: held-out accuracy and loss per round",
            (FAMILY, 20),
        )
        .map_err(e)?;
    let (top, bottom) = body.split_vertically(HEIGHT.saturating_sub(30) / 2);
    // Accuracy is a fraction; a little room below 0 keeps the failure
    // crosses off the frame.
    let acc_top = c.accuracy.iter().map(|p| p.1).fold(1.0, f64::max);
    panel(
        &top,
        c,
        Panel {
            points: &c.accuracy,
            y: (-0.05 * acc_top, headroom(acc_top, 1.05)),
            label: "held-out accuracy",
            colour: ACCURACY_COLOUR,
            x_desc: None,
            // Accuracy rises to the right and failures sit at the bottom,
            // so the middle is what stays free.
            legend_at: SeriesLabelPosition::MiddleRight,
        },
    )?;
    panel(
        &bottom,
        c,
        Panel {
            points: &c.loss,
            y: (-0.05 * c.loss_top, c.loss_top),
            label: "held-out loss",
            colour: LOSS_COLOUR,
            x_desc: Some("round (each point: the model that round started from)"),
            legend_at: SeriesLabelPosition::UpperRight,
        },
    )?;
    root.present().map_err(e)
}

/// One panel's series and look.
struct Panel<'a> {
    points: &'a [(u64, f64)],
    y: (f64, f64),
    label: &'static str,
    colour: RGBColor,
    x_desc: Option<&'static str>,
    legend_at: SeriesLabelPosition,
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    c: &Curves,
    p: Panel<'_>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(e.to_string());
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .x_label_area_size(if p.x_desc.is_some() { 40 } else { 20 })
        .y_label_area_size(60)
        .build_cartesian_2d(0..c.x_end, p.y.0..p.y.1)
        .map_err(e)?;
    let mut mesh = chart.configure_mesh();
    mesh.y_desc(p.label)
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 14))
        // The fine grid only cluttered the curves.
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|v| format!("{v:.2}"));
    if let Some(d) = p.x_desc {
        mesh.x_desc(d);
    }
    mesh.draw().map_err(e)?;

    let colour = p.colour;
    chart
        .draw_series(LineSeries::new(
            p.points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(e)?
        .label(p.label)
        // A line, not a circle, so the picture's circles are the points alone.
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    chart
        .draw_series(
            p.points
                .iter()
                .map(|&xy| Circle::new(xy, POINT_RADIUS, colour.filled())),
        )
        .map_err(e)?;
    if !c.failed.is_empty() {
        chart
            .draw_series(
                c.failed
                    .iter()
                    .map(|&x| Cross::new((x, 0.0), 5, FAILED_COLOUR.stroke_width(2))),
            )
            .map_err(e)?
            .label("failed round")
            .legend(|(x, y)| Cross::new((x + 10, y), 4, FAILED_COLOUR.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(p.legend_at)
        .label_font((FAMILY, 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(e)
}

#[cfg(test)]
#[path = "plot/tests.rs"]
mod tests;
