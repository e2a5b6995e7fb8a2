//! bench/ncu_summary.py (the summary of scripts/gpu-run.sh's Nsight Compute steps) on a hand-written
//! capture in ncu's CSV export format (tests/data/ncu/default.{details,raw}.csv: a profiler
//! preamble before the header, grouping commas, "n/a", a units row, a same-named figure in two
//! sections), against values and shares worked out by hand from that file.
//! Needs python3 (scripts/test.sh installs it); fails without it.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The repository root; fails the test where python3 is missing.
fn with_python() -> &'static Path {
    let ok = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(ok, "python3 not found: these tests run bench/ncu_summary.py (scripts/test.sh installs python3)");
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9 * want.abs().max(1.0))
}

#[test]
fn ncu_summary_reads_ncu_csv_exports() {
    let root = with_python();
    let json_path = scratch("ncu-summary").join("ncu.json");
    let out = Command::new("python3")
        .arg(root.join("bench/ncu_summary.py"))
        .arg("--json")
        .arg(&json_path)
        .arg(root.join("tests/data/ncu/default.details.csv"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ncu_summary.py failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "two profiled launches: {v}");

    let attn = &rows[0];
    assert_eq!(attn["kernel"], "attention_d72_bf16");
    assert_eq!(attn["grid"], "(64, 16, 2)");
    // "612,800" ns
    assert!(close(&attn["duration_us"], 612.8), "{}", attn["duration_us"]);
    // the Speed Of Light section's "Memory Throughput" (%), not Memory Workload Analysis' (byte/s)
    assert!(close(&attn["mem_pct"], 40.2), "{}", attn["mem_pct"]);
    assert!(close(&attn["sm_pct"], 71.5) && close(&attn["dram_pct"], 10.0));
    assert!(close(&attn["regs"], 168.0) && close(&attn["occ_achieved"], 18.5) && close(&attn["occ_theory"], 18.75));
    assert!(close(&attn["ipc"], 1.23) && close(&attn["cycles_per_issue"], 12.5));
    // stalls: long_scoreboard 1, barrier 2, mio_throttle 4, math_pipe_throttle 3 (selected 1 is an
    // issue, not a stall): total 10, the top three 40%, 30%, 20%
    let stalls: Vec<(&str, f64)> = attn["top_stalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["reason"].as_str().unwrap(), s["share"].as_f64().unwrap()))
        .collect();
    assert_eq!(stalls.iter().map(|s| s.0).collect::<Vec<_>>(), ["mio_throttle", "math_pipe_throttle", "barrier"]);
    for (got, want) in stalls.iter().zip([0.4, 0.3, 0.2]) {
        assert!((got.1 - want).abs() < 1e-12, "{stalls:?}");
    }
    assert!(close(&attn["tensor_pipes_pct"]["tensor_op_hmma"], 55.0));
    // shared memory: 0 of 1,000 load wavefronts, 250 of 1,000 store wavefronts were conflicts
    assert!(close(&attn["smem_conflict_share"]["ld"], 0.0) && close(&attn["smem_conflict_share"]["st"], 0.25));

    let norm = &rows[1];
    assert_eq!(norm["kernel"], "norm_modulate_stream_bf16");
    assert!(close(&norm["duration_us"], 15.4) && close(&norm["dram_pct"], 77.5));
    assert!(norm["occ_achieved"].is_null(), "n/a reads as no value: {}", norm["occ_achieved"]);
    // long_scoreboard 6, barrier 2 (zeros are no stall reason): 75% / 25%
    let reasons: Vec<&str> =
        norm["top_stalls"].as_array().unwrap().iter().map(|s| s["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["long_scoreboard", "barrier"]);
    assert!(close(&norm["top_stalls"][0]["share"], 0.75));
    // st has conflicts 0 of 0 wavefronts: no share, not a division by zero
    assert!(norm["smem_conflict_share"]["st"].is_null());

    // the printed table names both kernels and the shares
    assert!(
        stdout.contains("attention_d72_bf16")
            && stdout.contains("mio_throttle 40%")
            && stdout.contains("long_scoreboard 75%"),
        "{stdout}"
    );
}

#[test]
fn ncu_summary_fails_clearly_without_kernels() {
    let root = with_python();
    let dir = scratch("ncu-summary-empty");
    // what ncu leaves when it profiled nothing (e.g. no access to the counters)
    let empty = dir.join("x.details.csv");
    std::fs::write(&empty, "==PROF== Connected to process 1\n==WARNING== No kernels were profiled.\n").unwrap();
    let out = Command::new("python3").arg(root.join("bench/ncu_summary.py")).arg(&empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no profiled kernel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let missing = dir.join("missing.details.csv");
    let out = Command::new("python3").arg(root.join("bench/ncu_summary.py")).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
