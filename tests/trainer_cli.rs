//! End-to-end tests of the `trainer` binary on small, generated data
//! (registered as a test target of the `trainer` package, which builds the binary).

use std::path::Path;
use std::process::{Command, Output};

fn trainer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).output().expect("trainer runs")
}

fn ok(args: &[&str]) -> String {
    let out = trainer(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "trainer {args:?} failed:\n{text}");
    text
}

fn fails(args: &[&str]) -> String {
    let out = trainer(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "trainer {args:?} should fail:\n{text}");
    text
}

/// A tiny model on the CPU, so each step takes milliseconds.
const TINY: [&str; 10] = ["--nlayers", "1", "--nresblocks", "1", "--nmlp", "1", "--nhidden", "32", "--backend", "flex"];

/// [`TINY`] without held-out evaluations.
const SMALL: [&str; 12] =
    [TINY[0], TINY[1], TINY[2], TINY[3], TINY[4], TINY[5], TINY[6], TINY[7], TINY[8], TINY[9], "--eval-images", "0"];

/// The trainer state in a checkpoint's JSON header.
fn checkpoint_state(path: &Path) -> serde_json::Value {
    let ckpt = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(ckpt[12..20].try_into().unwrap()) as usize;
    serde_json::from_slice(&ckpt[20..20 + header_len]).unwrap()
}

/// `train` of the [`SMALL`] model in batches of 16, without extra flags.
fn train_args<'a>(out: &'a Path, data: &'a str) -> Vec<&'a str> {
    let mut args = vec!["train", "--quiet", "--data", data, "--out", out.to_str().unwrap(), "--batch", "16"];
    args.extend(SMALL);
    args
}

fn train(out: &Path, data: &str, extra: &[&str]) -> String {
    let mut args = train_args(out, data);
    args.extend(extra);
    ok(&args)
}

/// `trainer eval` of `model` on `data`'s test split with one draw (unless
/// `extra` says otherwise): its JSON report.
fn eval_json(model: &Path, data: &str, extra: &[&str]) -> serde_json::Value {
    let json = model.with_extension("eval.json");
    let (model, json_path) = (model.to_str().unwrap(), json.to_str().unwrap());
    let mut args = vec!["eval", "--model", model, "--data", data, "--backend", "flex", "--json", json_path];
    args.extend(if extra.contains(&"--draws") { extra.to_vec() } else { [extra, &["--draws", "1"]].concat() });
    ok(&args);
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

fn eval_bpd(model: &Path, data: &str) -> f64 {
    eval_json(model, data, &[])["bpd_mean"].as_f64().unwrap()
}

#[test]
fn short_msds_training_lowers_test_bpd() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = "msds1,train=512,test=64";
    train(&run, data, &["--steps", "0"]);
    let ckpt = run.join("checkpoint.rgck");
    let before = eval_bpd(&ckpt, data);
    train(&run, data, &["--steps", "300", "--resume"]);
    let after = eval_bpd(&ckpt, data);
    eprintln!("MSDS1 test bpd: {before:.3} before, {after:.3} after 300 steps");
    assert!(after < before - 1.0, "test bpd went from {before:.3} to {after:.3}");
    // An epoch ended: a sample grid and a JSON-lines log were written.
    assert!(run.join("samples/epoch-0001.png").is_file());
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    assert!(log.lines().count() >= 300 && log.contains("\"event\":\"epoch\""));
    // Export, then sample from the export.
    let weights = dir.path().join("m.rgflow");
    ok(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", weights.to_str().unwrap(), "--f16"]);
    let grid = dir.path().join("grid.png");
    ok(&[
        "sample",
        "--model",
        weights.to_str().unwrap(),
        "--out",
        grid.to_str().unwrap(),
        "--count",
        "4",
        "--temperature",
        "0.5;1.0",
        "--backend",
        "flex",
    ]);
    let img = image::open(&grid).unwrap();
    assert!(img.width() > 4 * 32 && img.height() > 2 * 32);

    // Every scale-aware subcommand writes its picture.
    let w = weights.to_str().unwrap();
    for (name, cmd, extra) in [
        ("mix", "mix", vec!["--rows", "2"]),
        ("factor", "factor", vec!["--count", "5"]),
        ("walk", "walk", vec!["--level", "1", "--steps", "4"]),
        ("receptive", "receptive", vec!["--per-level", "2", "--image-temperature", "0.6"]),
        ("map", "inpaint", vec!["--method", "map", "--steps", "20"]),
        ("sample", "inpaint", vec!["--samples", "3", "--rounds", "3", "--mask", "centre:8", "--mask", "2,2,6,9"]),
    ] {
        let png = dir.path().join(format!("{name}.png"));
        let mut args = vec![cmd, "--model", w, "--backend", "flex", "--out", png.to_str().unwrap()];
        args.extend(extra);
        let text = ok(&args);
        let img = image::open(&png).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        match name {
            "map" => assert!(text.contains("blocks per step"), "{text}"),
            // Two rows (one per mask) of original, masked and 3 completions.
            "sample" => {
                assert!(text.contains("3 completions") && text.contains("blocks (encode + decode)"), "{text}");
                assert!(img.width() > 5 * 32 && img.height() > 2 * 32 && img.height() < 3 * 32 * 3, "{text}");
            }
            _ => {}
        }
    }
}

#[test]
fn resume_after_interruption_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = "msds2,train=48,test=16";
    let device = burn::prelude::Device::flex();
    let load = |p: &Path| {
        let bytes = std::fs::read(p.join("checkpoint.rgck")).unwrap();
        assert!(bytes.starts_with(b"RGFLOWCK"));
        // The model part of the checkpoint, exported to compare tensors.
        let out = p.join("w.rgflow");
        ok(&["export", "--checkpoint", p.join("checkpoint.rgck").to_str().unwrap(), "--out", out.to_str().unwrap()]);
        rgflow::weights::load(&out, &device).unwrap()
    };
    // bf16 products too: on CPUs with AMX they run on its tiles, with a tape
    // that leaves out the hidden values.
    for precision in ["f32", "bf16"] {
        let (a, b) = (dir.path().join(format!("{precision}-a")), dir.path().join(format!("{precision}-b")));
        // 3 steps per epoch, so the runs cross epoch ends; checkpoints every 2 steps.
        let with = |steps: &'static str, resume: bool| {
            let mut extra = vec!["--steps", steps, "--checkpoint-every", "2", "--precision", precision];
            if resume {
                extra.push("--resume");
            }
            extra
        };
        train(&a, data, &with("7", false));
        train(&b, data, &with("4", false));
        train(&b, data, &with("7", true));
        let (ma, mb) = (load(&a), load(&b));
        let x =
            burn::prelude::Tensor::<4>::random([2, 3, 32, 32], burn::tensor::Distribution::Uniform(0.0, 1.0), &device);
        let za = ma.encode(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let zb = mb.encode(x).into_data().try_to_vec::<f32>().unwrap();
        let worst = za.iter().zip(&zb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst == 0.0, "{precision}: resumed run differs from the uninterrupted one by {worst}");
    }
    // Resuming with different settings is refused.
    let b = dir.path().join("bf16-b");
    let mut args = vec![
        "train",
        "--quiet",
        "--data",
        data,
        "--out",
        b.to_str().unwrap(),
        "--batch",
        "8",
        "--steps",
        "9",
        "--precision",
        "bf16",
        "--resume",
    ];
    args.extend(SMALL);
    assert!(fails(&args).contains("differ from the run's own settings"));
}

#[test]
fn corrupt_images_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("faces dir");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    for i in 0..5u8 {
        image::RgbImage::from_fn(40, 50, |x, y| image::Rgb([x as u8 * 6, y as u8 * 5, i * 40]))
            .save(images.join(format!("img {i}.png")))
            .unwrap();
    }
    std::fs::write(images.join("sub/broken.jpg"), b"\xFF\xD8\xFF\xE0\x00\x10JFIF truncated").unwrap();
    std::fs::write(images.join("notes.txt"), b"not an image").unwrap();
    let text = train(&dir.path().join("run"), &format!("folder:{}", images.display()), &["--steps", "2"]);
    assert!(text.contains("5 images") || text.contains("6 images"), "{text}");
    assert!(text.contains("skipped 1 unreadable"), "{text}");
    assert!(text.contains("broken.jpg"), "{text}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    train(&run, "msds1,train=32,test=8", &["--steps", "1"]);
    let ckpt = run.join("checkpoint.rgck");
    let bytes = std::fs::read(&ckpt).unwrap();
    let cut = dir.path().join("cut.rgck");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&["sample", "--model", cut.to_str().unwrap(), "--out", "x.png", "--backend", "flex"]);
    assert!(err.contains("truncated"), "{err}");
    let not_model = dir.path().join("notes.txt");
    std::fs::write(&not_model, "hello").unwrap();
    let err = fails(&["sample", "--model", not_model.to_str().unwrap(), "--out", "x.png", "--backend", "flex"]);
    assert!(err.contains("not an rgflow weight file"), "{err}");
    assert!(fails(&["train", "--data", "imagenet:/x", "--out", "y", "--steps", "1"]).contains("unknown data kind"));
    assert!(fails(&["train", "--data", "msds1", "--out", run.to_str().unwrap(), "--steps", "1"]).contains("--resume"));
    assert!(
        fails(&["eval", "--model", ckpt.to_str().unwrap(), "--data", "folder:/nonexistent", "--backend", "flex"])
            .contains("does not exist")
    );
}

/// `sample` on the CPU decodes through the packed decoder; `--precision bf16`
/// gives nearly the same picture, and is refused where it does not apply.
#[test]
fn sample_precisions_agree() {
    let dir = tempfile::tempdir().unwrap();
    let png = |name: &str, precision: &str| {
        let path = dir.path().join(name);
        let args = [
            "sample",
            "--out",
            path.to_str().unwrap(),
            "--count",
            "4",
            "--temperature",
            "0.5;0.9",
            "--backend",
            "flex",
        ];
        ok(&[&args[..], &["--precision", precision]].concat());
        image::open(&path).unwrap().to_rgb8()
    };
    let (full, bf16) = (png("f32.png", "f32"), png("bf16.png", "bf16"));
    assert_eq!(full.dimensions(), bf16.dimensions());
    let diffs: Vec<u8> = full.as_raw().iter().zip(bf16.as_raw()).map(|(a, b)| a.abs_diff(*b)).collect();
    let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
    if rgflow::CpuDecoder::native_bf16() {
        assert!(mean > 0.0 && mean < 1.5, "mean difference {mean} levels");
    } else {
        assert_eq!(mean, 0.0, "without AVX512-BF16 both decode in f32");
    }
    let err = fails(&["sample", "--out", "x.png", "--precision", "bf16", "--backend", "wgpu"]);
    assert!(err.contains("--precision bf16 is a CPU decoder option"), "{err}");
}

/// `sample --backend wgpu` (the fused GPU decoder, on lavapipe here) draws
/// the picture the CPU draws.
#[test]
fn sample_on_the_gpu_matches_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let png = |backend: &str| {
        let path = dir.path().join(format!("{backend}.png"));
        ok(&["sample", "--out", path.to_str().unwrap(), "--count", "4", "--temperature", "0.7", "--backend", backend]);
        image::open(&path).unwrap().to_rgb8()
    };
    let (cpu, gpu) = (png("flex"), png("wgpu"));
    assert_eq!(cpu.dimensions(), gpu.dimensions());
    let worst = cpu.as_raw().iter().zip(gpu.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "pixels differ by up to {worst} levels");
}

/// `trainer bench` prints its figures: on the CPU the training rate and the
/// product bound (no sampling with `--sample-batches 0`); on a GPU backend
/// (lavapipe here) also what a step asks of the device — no host read
/// inside it — and the rate with steps queued back to back, read once per
/// stretch as `train` reads them.
#[test]
fn bench_prints_training_figures_and_a_gpu_step_reads_nothing() {
    let tiny = ["bench", "-L", "8", "--nlayers", "1", "--nhidden", "16", "--batch", "4", "--steps", "1"];
    let number_after = |text: &str, prefix: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line:\n{text}"));
        line[prefix.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let cpu = ok(&[&tiny[..], &["--backend", "flex", "--sample-batches", "0"]].concat());
    assert!(number_after(&cpu, "train:") > 0.0, "{cpu}");
    assert!(cpu.lines().any(|l| l.starts_with("bound:")), "{cpu}");
    assert!(!cpu.lines().any(|l| l.starts_with("sample:") || l.starts_with("eval:")), "{cpu}");

    let gpu = ok(&[&tiny[..], &["--backend", "wgpu", "--sample-batches", "0"]].concat());
    let step = gpu.lines().find(|l| l.starts_with("train:  per step:")).unwrap_or_else(|| panic!("{gpu}"));
    assert!(step.contains(" 0 host reads"), "{step}");
    let queued = gpu.lines().find(|l| l.contains("queued back to back")).unwrap_or_else(|| panic!("{gpu}"));
    assert!(queued.contains("16 steps queued") && queued.contains("host reads: 1, one per 16 steps"), "{queued}");
}

/// On a GPU backend (lavapipe here) `train` keeps CubeCL's measurements
/// (autotune's choices) in the run folder, and a resumed run opens the same
/// store (the file is not made anew); a CPU run has none to keep. (That the
/// resumed run then skips the tuning is measured, not tested: README, "On a
/// GPU".)
#[test]
fn gpu_runs_keep_their_tuning_in_the_run_folder() {
    let dir = tempfile::tempdir().unwrap();
    let train = |run: &Path, backend: &str, steps: &str, resume: bool| {
        let mut args = vec!["train", "--quiet", "-L", "8", "--nlayers", "1", "--nresblocks", "1", "--nmlp", "1"];
        args.extend(["--nhidden", "16", "--batch", "4", "--data", "msds1,train=16,test=4", "--eval-images", "0"]);
        args.extend(["--backend", backend, "--steps", steps, "--out", run.to_str().unwrap()]);
        if resume {
            args.push("--resume");
        }
        ok(&args);
    };
    let gpu = dir.path().join("gpu");
    train(&gpu, "wgpu", "2", false);
    let store = gpu.join("gpu-tuning");
    let files: Vec<String> = std::fs::read_dir(&store)
        .unwrap_or_else(|e| panic!("{}: {e}", store.display()))
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().any(|f| f.ends_with(".db")), "{files:?}");
    let created = |path: &Path| std::fs::metadata(path).unwrap().created().ok();
    let db = store.join(files.iter().find(|f| f.ends_with(".db")).unwrap());
    let before = created(&db);
    train(&gpu, "wgpu", "3", true);
    assert_eq!(created(&db), before, "the store was made anew");
    assert_eq!(checkpoint_state(&gpu.join("checkpoint.rgck"))["step"].as_u64(), Some(3));

    let cpu = dir.path().join("cpu");
    train(&cpu, "flex", "1", false);
    assert!(!cpu.join("gpu-tuning").exists());
}

/// `RGFLOW_CPU_KERNELS` picks the matrix-product kernels: the portable
/// loops sample the same picture as the CPU's best kernels (up to float
/// rounding), and a family the CPU lacks is refused before any work.
#[test]
fn cpu_kernel_families_agree_and_bad_choices_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let png = |kernels: &str| {
        let path = dir.path().join(format!("{kernels}.png"));
        let args =
            ["sample", "--out", path.to_str().unwrap(), "--count", "4", "--temperature", "0.8", "--backend", "flex"];
        let out = Command::new(env!("CARGO_BIN_EXE_trainer")).args(args).env("RGFLOW_CPU_KERNELS", kernels).output();
        let out = out.expect("trainer runs");
        assert!(out.status.success(), "{kernels}: {}", String::from_utf8_lossy(&out.stderr));
        image::open(&path).unwrap().to_rgb8()
    };
    let best = rgflow::decoder::Isa::detect().name();
    let (portable, fastest) = (png("portable"), png(best));
    let worst = portable.as_raw().iter().zip(fastest.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "{best} and portable kernels differ by {worst} levels");
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["sample", "--out", "x.png", "--backend", "flex"])
        .env("RGFLOW_CPU_KERNELS", "sse9")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("RGFLOW_CPU_KERNELS=sse9: this CPU runs portable"), "{err}");
}

/// `--devices 2` splits each batch across two devices (here two shares on
/// the CPU) and takes the same steps as one device, up to rounding.
#[test]
fn data_parallel_training_takes_the_same_steps() {
    let dir = tempfile::tempdir().unwrap();
    let steps = |devices: &str| {
        let run = dir.path().join(format!("run{devices}"));
        train(&run, "msds1,train=64,test=8", &["--steps", "3", "--devices", devices]);
        let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
        log.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["event"] == "step")
            .map(|v| (v["bpd"].as_f64().unwrap(), v["grad_norm"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let (one, two) = (steps("1"), steps("2"));
    assert_eq!(one.len(), 3);
    for ((bpd1, norm1), (bpd2, norm2)) in one.iter().zip(&two) {
        assert!((bpd1 - bpd2).abs() < 1e-4 * bpd1, "bpd {bpd1} vs {bpd2}");
        assert!((norm1 - norm2).abs() < 1e-3 * norm1, "gradient norm {norm1} vs {norm2}");
    }
    assert!(fails(&["train", "--data", "msds1", "--out", "z", "--steps", "1", "--devices", "0"]).contains("--devices"));
}

/// `trainer eval --limit 200 --draws 2` of `models/celeba32.rgflow` on
/// 009001–009200, measured when the model was shipped.
const SHIPPED_MODEL_BPD_200: f64 = 3.8638;

/// The shipped face model on 200 held-out faces (009001–009200): fails if
/// loading, preprocessing or the weights regress. Needs the CelebA copy in
/// `../shared/data/celeba` (or `$RGFLOW_CELEBA_DIR`); says so when skipped.
#[test]
fn shipped_model_keeps_its_held_out_bits_per_dim() {
    // Measured when `models/celeba32.rgflow` was shipped (see the model card),
    // plus a margin of 0.01 for other CPUs' rounding; never loosened after the fact.
    const MEASURED: f64 = SHIPPED_MODEL_BPD_200;
    const BOUND: f64 = MEASURED + 0.01;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let celeba = std::env::var_os("RGFLOW_CELEBA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/data/celeba"));
    if !celeba.join("list_eval_partition.txt").is_file() {
        eprintln!("SKIPPED: no CelebA copy at {} (set RGFLOW_CELEBA_DIR)", celeba.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = format!("celeba:{},test-last=1000", celeba.display());
    let model = root.join("models/celeba32.rgflow");
    // The report goes beside a copy, so the repository stays untouched.
    let copy = dir.path().join("celeba32.rgflow");
    std::fs::copy(&model, &copy).unwrap();
    let v = eval_json(&copy, &data, &["--limit", "200", "--draws", "2"]);
    let bpd = v["bpd_mean"].as_f64().unwrap();
    assert_eq!(v["images"].as_u64(), Some(200));
    eprintln!("shipped model: {bpd:.4} bits/dim on 200 held-out faces (measured {MEASURED}, bound {BOUND})");
    assert!(bpd < BOUND, "the shipped model scores {bpd:.4} bits/dim, above its bound {BOUND}");
}

/// The pixel variance inside the hole, per channel, averaged over channels and images.
fn hole_variance(images: &[f32], unknown: &[bool]) -> f64 {
    let plane = unknown.len();
    let planes: Vec<&[f32]> = images.chunks(plane).collect();
    let per_plane = planes.iter().map(|p| {
        let v: Vec<f64> = (0..plane).filter(|s| unknown[*s]).map(|s| p[s] as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64
    });
    per_plane.sum::<f64>() / planes.len() as f64
}

/// On the shipped face model, completions drawn in the hole's causal cone
/// keep the contrast of a face, where the MAP fill is nearly flat (the
/// benchmark measures 0.8 of the truth's hole variance against 0.1–0.2).
/// The truth is a generated face, so no dataset is needed.
#[test]
fn sampled_completions_have_the_contrast_the_map_fill_lacks() {
    use burn::prelude::*;
    use rgflow::LevelTemperatures;
    use rgflow::explore::{ConeSampler, InpaintOptions, SampleOptions, inpaint};
    let device = Device::flex();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let flow = rgflow::weights::load(&root.join("models/celeba32.rgflow"), &device).unwrap();
    let levels = flow.lattice().levels();
    let face = flow.sample(1, &LevelTemperatures::uniform(levels, 0.7), 6, &device).unwrap();
    let pixels = face.clone().into_data().try_to_vec::<f32>().unwrap();
    let l = 32;
    let unknown: Vec<bool> = (0..l * l).map(|s| (10..22).contains(&(s / l)) && (10..22).contains(&(s % l))).collect();
    let options = SampleOptions {
        samples: 4,
        temperatures: LevelTemperatures::parse("0.4..1", levels).unwrap(),
        seed: 3,
        ..SampleOptions::new(levels, 1.0)
    };
    let mut sampler = ConeSampler::new(&flow, &pixels, &unknown, options, &device).unwrap();
    sampler.run();
    let sampled = hole_variance(&sampler.images().into_data().try_to_vec::<f32>().unwrap(), &unknown);
    let map = inpaint(&flow, face, &unknown, InpaintOptions { steps: 100, ..InpaintOptions::default() }).unwrap();
    let flat = hole_variance(&map.image.into_data().try_to_vec::<f32>().unwrap(), &unknown);
    let truth = hole_variance(&pixels, &unknown);
    eprintln!("hole variance: sampled {sampled:.5}, MAP {flat:.5}, truth {truth:.5}");
    assert!(sampled > 2.0 * flat, "sampled completions' hole variance {sampled:.5}, the MAP fill's {flat:.5}");
}

/// The weight average: evaluated beside the raw weights at the end of the
/// run, read by `eval` by default, the raw weights with `--weights raw`;
/// `--minutes` stops a run by training time.
#[test]
fn runs_keep_and_use_a_weight_average() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let data = "msds1,train=64,test=16";
    let mut args = vec![
        "train",
        "--quiet",
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--batch",
        "16",
        "--eval-images",
        "16",
        "--steps",
        "6",
        "--warmup-steps",
        "2",
        "--ema-decay",
        "0.5",
    ];
    args.extend(TINY);
    ok(&args);
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "eval", "{log}");
    assert_eq!(last["images_seen"].as_u64(), Some(6 * 16));
    let (raw, average) = (last["bpd"].as_f64().unwrap(), last["bpd_ema"].as_f64().unwrap());
    assert!(raw.is_finite() && average.is_finite() && raw != average, "{raw} {average}");
    let lr: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"step\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"].as_f64().unwrap())
        .collect();
    assert_eq!(lr[..3], [5e-4, 1e-3, 1e-3], "two warm-up steps, then the peak");
    let ckpt = run.join("checkpoint.rgck");
    let eval = |weights: &str| eval_json(&ckpt, data, &["--weights", weights])["bpd_mean"].as_f64().unwrap();
    assert_ne!(eval("average"), eval("raw"));
    // Equal-time runs: a tiny time budget stops after the first step.
    let timed = dir.path().join("timed");
    let mut timed_args = args.clone();
    timed_args[5] = timed.to_str().unwrap();
    let steps_at = timed_args.iter().position(|a| *a == "--steps").unwrap();
    timed_args.splice(steps_at..steps_at + 2, ["--minutes", "0.000001"]);
    ok(&timed_args);
    let steps = std::fs::read_to_string(timed.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event\":\"step\""))
        .count();
    assert_eq!(steps, 1);
}

/// The CLI's rule: no input ends in a panic (exit code 101), an abort or a
/// hang — only an error message naming the problem and a non-zero exit.
#[test]
fn bad_flags_and_data_end_in_messages_not_panics_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], needle: &str| {
        let out = trainer(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && out.status.code() != Some(101), "trainer {args:?}: {:?}\n{text}", out.status);
        assert!(text.contains(needle), "trainer {args:?} should mention `{needle}`:\n{text}");
    };
    let run = dir.path().join("r");
    let run = run.to_str().unwrap();
    refused(
        &["train", "--data", "msds1", "--out", run, "--steps", "1", "--checkpoint-every", "0"],
        "--checkpoint-every",
    );
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--lr", "NaN"], "--lr");
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--lr=-1"], "--lr");
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--weight-decay", "inf"], "--weight-decay");
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--clip-grad", "NaN"], "--clip-grad");
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--ema-decay", "1"], "--ema-decay");
    refused(&["train", "--data", "msds1", "--out", run, "--steps", "1", "--lr-decay", "cosine"], "--decay-until");
    refused(&["mix", "--rows", "0", "--out", "x.png"], "--rows");
    refused(&["walk", "--steps", "0", "--out", "x.png"], "--steps");
    refused(&["eval", "--batch", "0", "--data", "msds1"], "--batch");
    refused(&["eval", "--draws", "0", "--data", "msds1"], "--draws");
    refused(&["sample", "--count", "0", "--out", "x.png"], "--count");
    refused(&["mix", "--a", "seed:x", "--out", "x.png", "--backend", "flex"], "--a seed:x");
    refused(&["receptive", "--image", "nowhere.png", "--out", "x.png", "--backend", "flex"], "--image");

    // A folder of only corrupt images: an error within seconds, not an endless epoch.
    let images = dir.path().join("corrupt");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        std::fs::write(images.join(format!("{i}.jpg")), b"\xFF\xD8\xFF\xE0 not really").unwrap();
    }
    let start = std::time::Instant::now();
    let data = format!("folder:{}", images.display());
    let mut args = vec!["train", "--quiet", "--data", &data, "--out", run, "--steps", "5"];
    args.extend(SMALL);
    refused(&args, "unreadable");
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
}

/// `export` refuses weights that are not finite and leaves `--out` alone.
#[test]
fn export_refuses_non_finite_weights_and_keeps_the_old_file() {
    use burn::module::{Module, ModuleMapper, Param};
    struct Poison;
    impl ModuleMapper for Poison {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<burn::prelude::Tensor<D>>,
        ) -> Param<burn::prelude::Tensor<D>> {
            param.map(|t| t.mul_scalar(f32::NAN))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let device = burn::prelude::Device::flex();
    let config = rgflow::RgFlowConfig::from_level_specs(8, 3, "1", "1", "1", "8").unwrap();
    let nan = dir.path().join("nan.rgflow");
    rgflow::weights::save(&config.init(&device).map(&mut Poison), &nan, rgflow::weights::StoragePrecision::F32)
        .unwrap();
    let out = dir.path().join("out.rgflow");
    std::fs::write(&out, b"the previous export").unwrap();
    let err = fails(&["export", "--checkpoint", nan.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(err.contains("not exported"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"the previous export");
}

/// SIGTERM (docker stop, SLURM) checkpoints like Ctrl-C: the run stops with
/// a checkpoint at the step it reached, and resumes from there.
#[cfg(unix)]
#[test]
fn sigterm_saves_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = train_args(&run, "msds1,train=64,test=8");
    args.extend(["--steps", "1000000", "--checkpoint-every", "1000000"]);
    let child = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let log = run.join("log.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |l| l.lines().count()) < 5 {
        assert!(start.elapsed().as_secs() < 60, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {text}", out.status);
    assert!(text.contains("interrupted, saved"), "{text}");
    let steps_logged =
        std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("\"event\":\"step\"")).count();
    let state = checkpoint_state(&run.join("checkpoint.rgck"));
    assert_eq!(state["step"].as_u64(), Some(steps_logged as u64), "the checkpoint holds the last step taken");
    let more = (steps_logged + 2).to_string();
    let mut resume = args.clone();
    let at = resume.iter().position(|a| *a == "1000000").unwrap();
    resume[at] = &more;
    resume.push("--resume");
    let text = ok(&resume);
    assert!(text.contains(&format!("resuming {} at step {steps_logged}", run.display())), "{text}");
}

/// Non-finite steps are skipped and logged, never applied or saved; enough
/// of them in a row stop the run, naming the last good checkpoint.
#[test]
fn non_finite_steps_are_skipped_then_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut args = train_args(&run, "msds1,train=64,test=8");
    // An absurd rate blows the weights up after the first step.
    args.extend([
        "--lr",
        "1e6",
        "--warmup-steps",
        "0",
        "--max-bad-steps",
        "3",
        "--checkpoint-every",
        "1",
        "--steps",
        "50",
    ]);
    let err = fails(&args);
    assert!(
        err.contains("3 steps in a row had a non-finite loss or gradient") && err.contains("stopped without saving"),
        "{err}"
    );
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let events: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    let skipped = events.iter().filter(|e| *e == "skip").count();
    assert_eq!(skipped, 3, "{events:?}");
    // The checkpoint holds the last applied step, not a skipped one.
    let state = checkpoint_state(&run.join("checkpoint.rgck"));
    let applied = events.iter().filter(|e| *e == "step").count() as u64;
    assert_eq!(state["step"].as_u64(), Some(applied), "{events:?}");
}

/// The steps between reads (`--check-every`) run ahead unchecked; the run's
/// numbers do not depend on how many: every step's loss and gradient norm,
/// the held-out score at the end and the checkpoint's counters are those of
/// a run read every step — also when a stretch holds non-finite steps, which
/// are redone and skipped as they would have been.
#[test]
fn steps_read_back_in_stretches_give_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let lines = |run: &Path| -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
        log.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // What must agree: the event, step, losses, gradient norm, rate, and
    // held-out scores (not the times).
    let numbers = |line: &serde_json::Value| {
        ["event", "step", "epoch", "images_seen", "bpd", "bpd_std", "bpd_ema", "grad_norm", "lr"]
            .map(|k| line.get(k).cloned().unwrap_or_default())
            .to_vec()
    };
    for (name, extra) in [
        ("healthy", vec!["--steps", "7", "--checkpoint-every", "5"]),
        // An absurd rate blows the weights up after the first step: the
        // first stretch of 3 holds a good step and two bad ones.
        ("diverging", vec!["--lr", "1e6", "--warmup-steps", "0", "--max-bad-steps", "4", "--steps", "20"]),
    ] {
        let mut runs = Vec::new();
        for every in ["1", "3"] {
            let run = dir.path().join(format!("{name}-{every}"));
            // Held-out scores at each epoch end (4 steps) too.
            let out = run.to_str().unwrap();
            let mut args = vec!["train", "--quiet", "--data", "msds1,train=64,test=8", "--out", out, "--batch", "16"];
            args.extend(TINY);
            args.extend(["--eval-images", "8", "--check-every", every]);
            args.extend(&extra);
            if name == "healthy" {
                ok(&args);
            } else {
                let err = fails(&args);
                assert!(err.contains("4 steps in a row had a non-finite loss"), "{err}");
            }
            runs.push(run);
        }
        let (one, three) = (lines(&runs[0]), lines(&runs[1]));
        assert_eq!(one.len(), three.len(), "{name}: {one:?}\n{three:?}");
        for (a, b) in one.iter().zip(&three) {
            assert_eq!(numbers(a), numbers(b), "{name}");
        }
        // The last checkpoint (the diverging run's at its first epoch end):
        // the same counters (a bad step applied would count an average
        // update), and weights that score the same to the last bit (the raw
        // ones and their average).
        let state = |run: &Path| checkpoint_state(&run.join("checkpoint.rgck"));
        let (a, b) = (state(&runs[0]), state(&runs[1]));
        for key in ["step", "cursor", "images_seen", "average_updates"] {
            assert_eq!(a[key], b[key], "{name}: {key}");
        }
        for weights in [&["--weights", "average"][..], &["--weights", "raw"]] {
            let score = |run: &Path| {
                eval_json(&run.join("checkpoint.rgck"), "msds1,train=64,test=8", weights)["bpd_mean"].clone()
            };
            let (a, b) = (score(&runs[0]), score(&runs[1]));
            // (The diverging run's one applied step leaves weights that score no finite number.)
            let finite = a.as_f64().is_some_and(f64::is_finite) || name == "diverging";
            assert!(finite && a == b, "{name} {weights:?}: {a} against {b}");
        }
        if name == "diverging" {
            let skips = one.iter().filter(|l| l["event"] == "skip").count();
            assert_eq!(skips, 4, "{one:?}");
        }
    }
}

/// `trainer import` turns the authors' training checkpoint (`{'flow',
/// 'optimizer'}` from torch.save, `module.net.` keys), a bare state dict
/// (`.pth`) or the same as safetensors into a weight file that scores what
/// their code scores on the golden vectors; a config that
/// does not fit the file is named and nothing is written.
#[test]
fn import_reads_the_authors_checkpoint() {
    use burn::prelude::*;
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tests/golden");
    let args = golden.join("authors/ref_l8_laplace.args.json");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("theirs.rgflow");
    let (args_s, out_s) = (args.to_str().unwrap(), out.to_str().unwrap());
    let vectors = rgflow::import::StateDict::read(&golden.join("ref_l8_laplace.safetensors")).unwrap();
    let (x, theirs) = (vectors.get("test.x_logit").unwrap(), vectors.get("test.log_prob").unwrap());
    let shape: [usize; 4] = x.shape.clone().try_into().unwrap();
    let device = Device::flex();
    let x = Tensor::<4>::from_data(burn::tensor::TensorData::new(x.to_f32(), shape), &device);
    // Their training checkpoint, a bare state dict, and the same as safetensors.
    for file in ["authors/ref_l8_laplace.state", "authors/ref_l8_laplace.pth", "ref_l8_laplace.safetensors"] {
        let from = golden.join(file);
        let text = ok(&["import", "--from", from.to_str().unwrap(), "--config", args_s, "--out", out_s]);
        assert!(text.contains("wrote"), "{file}: {text}");
        let flow = rgflow::weights::load(&out, &device).unwrap();
        let ours = flow.log_prob(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&theirs.values) {
            assert!((*a as f64 - b).abs() <= 1e-4 * b.abs().max(1.0), "{file}: log-prob {a} vs the authors' {b}");
        }
    }

    // Their arguments for another width: the first tensor that does not fit is named.
    let wide = dir.path().join("wide.json");
    let text = std::fs::read_to_string(&args).unwrap().replace(r#""nhidden": "16""#, r#""nhidden": "32""#);
    std::fs::write(&wide, text).unwrap();
    let never = dir.path().join("never.rgflow");
    let from_s = golden.join("authors/ref_l8_laplace.state");
    let from_s = from_s.to_str().unwrap();
    let err =
        fails(&["import", "--from", from_s, "--config", wide.to_str().unwrap(), "--out", never.to_str().unwrap()]);
    assert!(err.contains("has shape") && err.contains("ref_l8_laplace.state"), "{err}");
    assert!(!never.exists());
    let err = fails(&["import", "--from", args_s, "--config", args_s, "--out", never.to_str().unwrap()]);
    assert!(err.contains("not a readable PyTorch checkpoint"), "{err}");
}
