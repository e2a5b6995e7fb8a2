//! scripts/bench-table.py on a hand-written GPU run (kernels, step, PyTorch and CLI JSON with round
//! numbers): the pairing of our rows with PyTorch's (the wgmma rows with the same SDPA row), the
//! fractions it recomputes, what a forward is made of, and the targets table, against ratios and
//! sums worked out by hand below.
//! Needs python3 (scripts/test.sh installs it); fails without it.

use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, v: &Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn kernel_row(name: &str, op: &str, bound: &str, us: f64, flop: f64, bytes: f64) -> Value {
    // benches/kernels.rs's check against the CPU backend (none for the rooflines)
    let check = if op.starts_with("roofline") { Value::Null } else { json!(2.5e-3) };
    json!({ "name": name, "op": op, "preset": name.split('/').nth(1).unwrap_or("-"), "shape": "-", "bound": bound,
            "median_us": us, "flop": flop, "bytes": bytes, "check_rel_l2": check })
}

fn torch_row(name: &str, op: &str, us: f64, tflops: Option<f64>, gbps: f64) -> Value {
    json!({ "name": name, "op": op, "median_us": us, "tflops": tflops, "gbps": gbps })
}

fn fixture(dir: &Path) {
    let p = "pixart-alpha-1024";
    // copy roofline: 3000 GB/s (6e9 bytes in 2000 µs); GEMM roofline 800 TFLOP/s
    let mut results = vec![
        kernel_row("roofline-copy", "roofline-copy", "memory", 2000.0, 0.0, 6e9),
        kernel_row("roofline-gemm", "roofline-gemm", "compute", 1000.0, 8e11, 0.0),
        kernel_row(&format!("attn-self/{p}"), "attn-self", "compute", 613.0, 1.546e11, 1e8),
        kernel_row(&format!("attn-cross/{p}"), "attn-cross", "compute", 39.7, 4.5e9, 5e7),
        // 2325 GB/s = 77.5% of 3000
        kernel_row(&format!("norm-modulate/{p}"), "norm-modulate", "memory", 16.0, 0.0, 2325.0 * 16.0e3),
        // 2700 GB/s = 90%
        kernel_row(&format!("residual-delta/{p}"), "residual-delta", "memory", 10.0, 0.0, 2700.0 * 10.0e3),
        kernel_row(&format!("attn-self-wgmma/{p}"), "attn-self-wgmma", "compute", 380.0, 1.546e11, 1e8),
    ];
    results.push(kernel_row(&format!("attn-cross-wgmma/{p}"), "attn-cross-wgmma", "compute", 50.0, 4.5e9, 5e7));
    results.push(kernel_row(
        &format!("attn-self-wgmma-qregs/{p}"),
        "attn-self-wgmma-qregs",
        "compute",
        300.0,
        1.546e11,
        1e8,
    ));
    // The rest of a PixArt block's ops (2400 GB/s = 80% of 3000 for the residual).
    results.push(kernel_row(&format!("residual-gated/{p}"), "residual-gated", "memory", 12.0, 0.0, 2400.0 * 12.0e3));
    for (op, us) in [("gemm-qkv", 100.0), ("gemm-proj", 35.0), ("gemm-ff1-gelu", 140.0), ("gemm-ff2", 130.0)] {
        results.push(kernel_row(&format!("{op}/{p}"), op, "compute", us, 1e11, 1e8));
    }
    write(
        dir,
        "kernels-cuda.json",
        &json!({ "kind": "deltadit-kernels", "backend": "cuda", "dtype": "bf16", "machine": "test GPU",
        "date": "2026-11-26", "commit": "abc1234", "results": results, "errors": [] }),
    );
    // torch_reference.py names SDPA's fastest backend
    let mut sdpa_self = torch_row(&format!("attn-self/{p}"), "attn-self", 411.0, Some(376.0), 100.0);
    sdpa_self["sdpa_backend"] = json!("flash");
    write(
        dir,
        "torch-cuda.json",
        &json!({ "kind": "torch-reference", "backend": "torch", "device": "cuda", "machine": "test GPU",
        "torch": "2.x", "diffusers": "0.42.1", "dtype": "bf16",
        "results": [
            torch_row("roofline-copy", "roofline-copy", 2000.0, None, 3000.0),
            sdpa_self,
            torch_row(&format!("attn-cross/{p}"), "attn-cross", 42.2, Some(100.0), 100.0),
        ],
        "model": [ { "name": format!("forward/{p}"), "median_ms": 37.05 } ] }),
    );
    write(
        dir,
        "step-cuda.json",
        &json!({ "kind": "deltadit-step", "backend": "cuda", "dtype": "bf16", "machine": "test GPU",
        "date": "2026-11-26", "commit": "abc1234", "errors": [],
        "results": [
            { "name": format!("step/{p}"), "kind": "step", "preset": p, "median_ms": 33.3, "scheduler": "dpm-solver++" },
            { "name": format!("forward-wgmma/{p}"), "kind": "forward-wgmma", "preset": p, "median_ms": 20.0 },
            { "name": format!("forward-wgmma-qregs3/{p}"), "kind": "forward-wgmma-qregs3", "preset": p, "median_ms": 24.0 },
            { "name": format!("sample20-none/{p}"), "kind": "sample20-none", "preset": p, "median_ms": 666.0, "block_ratio": 1.0 },
            { "name": format!("sample20-delta/{p}"), "kind": "sample20-delta", "preset": p, "median_ms": 416.25, "block_ratio": 0.625,
              "rel_l2_vs_none": 0.2 },
        ] }),
    );
    write(
        dir,
        "cli-wgmma.json",
        &json!({ "model": p, "backend": "cuda (wgmma attention)", "machine": "test GPU", "dtype": "bf16",
        "scheduler": "dpm-solver++", "steps": 20, "guidance": 4.5, "batch": 2, "tokens": 4096, "layers": 28, "warmup": 1, "runs": 2,
        "rows": [
            { "policy": "none", "params": "", "total_s": 0.5, "per_step_ms": 25.0, "block_ratio": 1.0, "theoretical_speedup": 1.0,
              "measured_speedup": 1.0, "rel_l2": 0.0 },
            { "policy": "delta", "params": "n=2,nc=21,b=12", "total_s": 0.4, "per_step_ms": 20.0, "block_ratio": 0.625,
              "theoretical_speedup": 1.6, "measured_speedup": 0.0, "rel_l2": 0.2 },
        ] }),
    );
}

#[test]
fn joined_table_pairs_rows_and_reports_targets() {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "python3 not found: this test runs scripts/bench-table.py (scripts/test.sh installs python3)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-table-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    fixture(&dir);
    let out_json = dir.join("joined.json.out");
    let out = Command::new("python3")
        .arg(root.join("scripts/bench-table.py"))
        .arg(&dir)
        .arg("--json")
        .arg(&out_json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench-table.py failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    let targets_at = text.rfind("\nTargets").unwrap_or_else(|| panic!("no targets table:\n{text}"));
    assert!(targets_at > text.rfind("\ndeltadit bench:").unwrap_or(0), "the targets table is not last:\n{text}");
    let j: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();

    // Kernel rows: the wgmma row is paired with SDPA's attn-self row.
    let k = |name: &str| {
        j["kernels"].as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or(Value::Null)
    };
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(close(k("attn-self-wgmma/pixart-alpha-1024")["torch_over_ours"].as_f64().unwrap(), 411.0 / 380.0));
    assert!(close(k("attn-self-wgmma-qregs/pixart-alpha-1024")["torch_over_ours"].as_f64().unwrap(), 411.0 / 300.0));
    assert!(close(k("norm-modulate/pixart-alpha-1024")["roofline_frac"].as_f64().unwrap(), 0.775));
    // the check column: shown for a checked run, "-" for the rooflines
    assert_eq!(k("norm-modulate/pixart-alpha-1024")["check_rel_l2"].as_f64(), Some(2.5e-3));
    assert!(k("roofline-copy")["name"] == "roofline-copy" && k("roofline-copy")["check_rel_l2"].is_null());
    assert!(text.contains("check (rel L2 vs CPU)") && text.contains("2.5e-03"), "no check column:\n{text}");

    // Targets: value and verdict per row.
    let t = |needle: &str| -> (f64, Value) {
        let r = j["targets"].as_array().unwrap().iter().find(|r| r["target"].as_str().unwrap().contains(needle));
        let r = r.unwrap_or_else(|| panic!("no target row with {needle:?} in {}", j["targets"]));
        (r["value"].as_f64().unwrap(), r["met"].clone())
    };
    let (v, met) = t("attention self, d 72, 2×16×4096², vs SDPA");
    assert!(close(v, 411.0 / 613.0) && met == false);
    let measured = |needle: &str| {
        j["targets"].as_array().unwrap().iter().find(|r| r["target"].as_str().unwrap() == needle).unwrap()["measured"]
            .clone()
    };
    assert_eq!(measured("attention self, d 72, 2×16×4096², vs SDPA"), "0.67× (SDPA flash/ours)");
    assert_eq!(measured("attention cross 4096×120 masked, vs SDPA"), "1.06× (SDPA/ours)");
    let (v, met) = t("attention self, d 72, 2×16×4096², vs SDPA (wgmma kernel)");
    assert!(close(v, 411.0 / 380.0) && met == true);
    let (v, met) = t("attention cross 4096×120 masked, vs SDPA (wgmma kernel)");
    assert!(close(v, 42.2 / 50.0) && met == false);
    let (v, met) = t("attention self, d 72, 2×16×4096², vs SDPA (wgmma-qregs kernel)");
    assert!(close(v, 411.0 / 300.0) && met == true);
    let (v, met) = t("norm-modulate [8192, 1152]");
    assert!(close(v, 0.775) && met == false);
    let (v, met) = t("residual-delta [8192, 1152]");
    assert!(close(v, 0.9) && met == true);
    let (v, met) = t("PixArt-α 1024 step with CFG");
    assert!(close(v, 33.3 / 37.05) && met == false);
    let (v, met) = t("wgmma attention");
    assert!(close(v, 20.0 / 37.05) && met == true);
    let (v, met) = t("wgmma-qregs3 attention");
    assert!(close(v, 24.0 / 37.05) && met == false);
    let (v, met) = t("step bench");
    assert!(close(v, 666.0 / 416.25) && met == true);
    let (v, met) = t("deltadit bench");
    assert!(close(v, 0.5 / 0.4) && met == false);
    let (v, met) = t("residual-gated [8192, 1152]");
    assert!(close(v, 0.8) && met == false);
    assert_eq!(j["targets"].as_array().unwrap().len(), 13, "{}", j["targets"]);

    // What a forward is made of: per block 2 norms (16 µs), QKV 100, self 613, 3 projections (35),
    // cross 39.7, 3 residuals (12), FF1 140, FF2 130 = 1195.7 µs; × 28 blocks. Torch has no GEMM rows here.
    let sum = j["composition"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["op"] == "sum" && r["preset"] == "pixart-alpha-1024")
        .unwrap();
    assert!(close(sum["ours_ms"].as_f64().unwrap(), 1195.7 * 28.0 / 1e3), "{sum}");
    assert!(sum["torch_ms"].is_null() && sum["torch_forward_ms"].as_f64() == Some(37.05), "{sum}");
    let proj = j["composition"].as_array().unwrap().iter().find(|r| r["op"] == "gemm-proj").unwrap();
    assert_eq!(proj["count"].as_u64(), Some(84));
}
