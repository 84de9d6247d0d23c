//! `trainer plot`: learning curves of one or more runs (`log.jsonl`) as a
//! PNG — held-out bits/dim against images seen and against training time,
//! side by side, so runs of different speeds compare both ways.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;

use crate::train::LogLine;

/// Arguments of `trainer plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Runs to draw: a run folder or its `log.jsonl`, optionally `=LABEL`
    /// (default label: the folder's name). Repeat for several runs.
    #[arg(long = "run", required = true)]
    pub runs: Vec<String>,
    /// Output PNG.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also draw each run's training bits/dim (a moving average over this
    /// many steps; 0 = off).
    #[arg(long, default_value_t = 50)]
    pub train_window: usize,
    /// Title above the plots.
    #[arg(long, default_value = "RG-Flow learning curves")]
    pub title: String,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 1400)]
    pub width: u32,
    #[arg(long, default_value_t = 560)]
    pub height: u32,
}

/// One run's curves: `(images seen, training hours, bits/dim)` points.
#[derive(Debug, Default)]
pub struct Curves {
    pub label: String,
    pub eval_raw: Vec<(f64, f64, f64)>,
    pub eval_average: Vec<(f64, f64, f64)>,
    pub train: Vec<(f64, f64, f64)>,
}

/// Reads a run's `log.jsonl` (`path` is the file or its folder).
pub fn read_curves(path: &Path, label: Option<&str>, train_window: usize) -> anyhow::Result<Curves> {
    let file = if path.is_dir() { path.join("log.jsonl") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).with_context(|| format!("reading training log {}", file.display()))?;
    let default_label =
        file.parent().and_then(|p| p.file_name()).map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let mut curves = Curves { label: label.map_or(default_label, str::to_string), ..Curves::default() };
    let mut window: std::collections::VecDeque<f64> = Default::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry: LogLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a training log line", file.display(), n + 1))?;
        // Older logs lack `images_seen`; the step count stands in for them there.
        let x = entry.images_seen as f64;
        let hours = entry.seconds / 3600.0;
        match entry.event.as_str() {
            "eval" | "epoch" => {
                if let Some(b) = entry.bpd {
                    curves.eval_raw.push((x, hours, b));
                }
                if let Some(b) = entry.bpd_ema {
                    curves.eval_average.push((x, hours, b));
                }
            }
            "step" if train_window > 0 => {
                if let Some(b) = entry.bpd {
                    window.push_back(b);
                    if window.len() > train_window {
                        window.pop_front();
                    }
                    if window.len() == train_window && entry.step.is_multiple_of((train_window as u64 / 5).max(1)) {
                        curves.train.push((x, hours, window.iter().sum::<f64>() / train_window as f64));
                    }
                }
            }
            _ => {}
        }
    }
    if curves.eval_raw.is_empty() && curves.train.is_empty() {
        anyhow::bail!("{} has no evaluations or steps to plot", file.display());
    }
    Ok(curves)
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let runs: Vec<Curves> = args
        .runs
        .iter()
        .map(|spec| {
            let (path, label) = match spec.split_once('=') {
                Some((p, l)) => (p, Some(l)),
                None => (spec.as_str(), None),
            };
            read_curves(Path::new(path), label, args.train_window)
        })
        .collect::<anyhow::Result<_>>()?;
    draw(&runs, &args.title, (args.width, args.height), &args.out)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The bundled font (plotters draws text through ab_glyph, so no system
/// fonts or fontconfig are needed).
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let font: &'static [u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
            panic!("the bundled font is a valid TrueType file");
        }
    });
}

/// Draws `runs` into a `size` PNG at `out`.
pub fn draw(runs: &[Curves], title: &str, size: (u32, u32), out: &Path) -> anyhow::Result<()> {
    register_font();
    let (w, h) = size;
    if w < 300 || h < 200 {
        anyhow::bail!("the plot needs at least 300×200 pixels, got {w}×{h}");
    }
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        let root = root.titled(title, ("sans-serif", 22)).map_err(plot_error)?;
        let (plots, footer) = root.split_vertically(root.dim_in_pixel().1.saturating_sub(26));
        footer
            .titled(
                "thick: held-out bits/dim of the weights' moving average · dashed: of the raw weights · faint: training loss (moving average)",
                ("sans-serif", 14),
            )
            .map_err(plot_error)?;
        let (left, right) = plots.split_horizontally(w / 2);
        panel(&left, runs, "images seen", |p| p.0)?;
        panel(&right, runs, "training hours", |p| p.1)?;
        root.present().map_err(plot_error)?;
    }
    let image = image::RgbImage::from_raw(w, h, buffer).expect("buffer sized w × h × 3");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    image.save(out).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A tick label with as many decimals as an axis spanning `range` needs
/// (thousands as `k` and millions as `M` on long axes).
fn tick(v: f64, range: f64) -> String {
    if range >= 2e6 {
        format!("{:.1}M", v / 1e6)
    } else if range >= 2e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        let decimals = (1.0 - range.max(1e-9).log10().floor()).clamp(0.0, 6.0) as usize;
        format!("{v:.decimals$}")
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Curves],
    x_label: &str,
    x_of: impl Fn(&(f64, f64, f64)) -> f64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let all = || runs.iter().flat_map(|r| r.eval_raw.iter().chain(&r.eval_average).chain(&r.train));
    let x_max = all().map(&x_of).fold(0.0, f64::max).max(1e-9);
    // The y range follows the held-out points (the early training loss is far above them).
    let evals = || runs.iter().flat_map(|r| r.eval_raw.iter().chain(&r.eval_average));
    let (mut y_min, mut y_max) =
        evals().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    if !y_min.is_finite() {
        (y_min, y_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    }
    let pad = ((y_max - y_min) * 0.08).max(0.01);
    let (y_lo, y_hi) = (y_min - pad, y_max + pad * 2.0);
    let mut chart = ChartBuilder::on(area)
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max * 1.02, y_lo..y_hi)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("held-out bits/dim")
        .x_label_formatter(&|v| tick(*v, x_max))
        .y_label_formatter(&|v| tick(*v, y_hi - y_lo))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    // Points above the range (a run's early training loss) are left out, not
    // flattened onto the top edge.
    let clip = |points: &[(f64, f64, f64)]| -> Vec<(f64, f64)> {
        points.iter().filter(|p| (y_lo..=y_hi).contains(&p.2)).map(|p| (x_of(p), p.2)).collect()
    };
    for (i, run) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if !run.train.is_empty() {
            chart
                .draw_series(LineSeries::new(clip(&run.train), color.mix(0.25).stroke_width(1)))
                .map_err(plot_error)?;
        }
        let raw = chart
            .draw_series(DashedLineSeries::new(clip(&run.eval_raw), 6, 4, color.mix(0.8).stroke_width(1)))
            .map_err(plot_error)?;
        if run.eval_average.is_empty() {
            raw.label(run.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2)));
        } else {
            chart
                .draw_series(LineSeries::new(clip(&run.eval_average), color.stroke_width(3)))
                .map_err(plot_error)?
                .label(run.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_become_curves_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run-a");
        std::fs::create_dir_all(&run).unwrap();
        let mut lines = Vec::new();
        for step in 1..=20u64 {
            lines.push(
                serde_json::json!({"event": "step", "step": step, "epoch": 0, "images_seen": step * 64,
                "bpd": 6.0 - step as f64 * 0.05, "bpd_std": 0.1, "grad_norm": 1.0, "images_per_sec": 100.0,
                "seconds": step as f64})
                .to_string(),
            );
            if step % 10 == 0 {
                lines.push(
                    serde_json::json!({"event": "eval", "step": step, "epoch": 0, "images_seen": step * 64,
                    "bpd": 5.5 - step as f64 * 0.01, "bpd_std": 0.3, "bpd_ema": 5.4 - step as f64 * 0.01,
                    "bpd_ema_std": 0.3, "grad_norm": null, "images_per_sec": null, "seconds": step as f64})
                    .to_string(),
                );
            }
        }
        std::fs::write(run.join("log.jsonl"), lines.join("\n")).unwrap();
        let curves = read_curves(&run, None, 5).unwrap();
        assert_eq!(curves.label, "run-a");
        assert_eq!(curves.eval_raw.iter().map(|p| p.0).collect::<Vec<_>>(), vec![640.0, 1280.0]);
        assert_eq!(curves.eval_average[1].2, 5.2);
        assert!(!curves.train.is_empty() && curves.train.iter().all(|p| p.2 < 6.0));
        assert_eq!(
            (tick(250_000.0, 1e6), tick(3.456, 0.5), tick(3.0, 40.0)),
            ("250k".into(), "3.46".into(), "3".into())
        );
        let out = dir.path().join("curves.png");
        draw(&[curves], "test", (600, 300), &out).unwrap();
        let png = image::open(&out).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (600, 300));
        // Something other than the white background was drawn.
        assert!(png.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1_000);

        std::fs::write(run.join("log.jsonl"), "not json\n").unwrap();
        assert!(read_curves(&run, None, 5).unwrap_err().to_string().contains("log.jsonl:1"));
    }
}
