//! Checks on the compiled kernels that need no GPU: every kernels/*.cu is in the fatbin and in the
//! shim library, ptxas reports no register spills for sm_80 and sm_90 (sm_90a for *_sm90a.cu), and
//! the SASS shows the instructions the design relies on (tensor-core mma, ldmatrix and cp.async in
//! attention; HGMMA without ptxas-serialised waits in the wgmma attention;
//! 128-bit loads in the memory-bound kernels).
//!
//! Without nvcc these checks print why they are skipped, unless DELTADIT_REQUIRE_KERNELS=1 (set by
//! scripts/test.sh), which turns a missing toolchain into a failure.

use deltadit::internals::build_info::{fatbin_path, ptxas_log, FATBINS, NVCC, SIM_BUILT};
use deltadit::internals::kernels::KERNELS;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn required() -> bool {
    std::env::var("DELTADIT_REQUIRE_KERNELS").is_ok_and(|v| v == "1")
}

fn kernel_stems() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether to run; prints the reason when not.
fn have_nvcc(test: &str) -> bool {
    if NVCC.is_some() {
        return true;
    }
    assert!(!required(), "{test}: DELTADIT_REQUIRE_KERNELS=1 but the kernels were built without nvcc");
    println!("skipped {test}: nvcc was not found at build time (run scripts/install-cuda.sh)");
    false
}

#[test]
fn every_kernel_file_is_built_for_gpu_and_shim() {
    if !have_nvcc("every_kernel_file_is_built_for_gpu_and_shim") {
        return;
    }
    let built: Vec<&str> = FATBINS.iter().map(|(s, _)| *s).collect();
    for stem in kernel_stems() {
        assert!(built.contains(&stem.as_str()), "kernels/{stem}.cu has no fatbin");
    }
    assert!(SIM_BUILT || !required(), "the SIMT shim library was not built");
}

/// (function, arch) → (registers, spill store bytes, spill load bytes) from a ptxas -v report.
fn parse_ptxas(log: &str) -> BTreeMap<(String, String), (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut spills = (0, 0);
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            let arch = rest.split("for '").nth(1).and_then(|r| r.split('\'').next()).unwrap_or("").to_string();
            current = Some((name, arch));
        } else if line.contains("bytes spill stores") {
            let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
            // "N bytes stack frame, S bytes spill stores, L bytes spill loads"
            if nums.len() >= 3 {
                spills = (nums[1], nums[2]);
            }
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs: u32 = rest.split_whitespace().next().and_then(|t| t.parse().ok()).unwrap_or(0);
            if let Some(key) = current.take() {
                out.insert(key, (regs, spills.0, spills.1));
            }
        }
    }
    out
}

#[test]
fn ptxas_reports_no_spills_on_sm80_and_sm90() {
    if !have_nvcc("ptxas_reports_no_spills_on_sm80_and_sm90") {
        return;
    }
    let mut failures = Vec::new();
    println!("{:<34} {:>6} {:>5} {:>14}", "kernel", "arch", "regs", "spill st/ld");
    for stem in kernel_stems() {
        let log = ptxas_log(&stem).unwrap_or_else(|| panic!("no ptxas report for kernels/{stem}.cu"));
        let entries = parse_ptxas(&log);
        assert!(!entries.is_empty(), "kernels/{stem}.cu: no entry functions in the ptxas report");
        let names: std::collections::BTreeSet<&String> = entries.keys().map(|(n, _)| n).collect();
        // *_sm90a.cu files are built for sm_90a alone (build.rs).
        let archs: &[&str] = if stem.ends_with("_sm90a") { &["sm_90a"] } else { &["sm_80", "sm_90"] };
        for name in names {
            for &arch in archs {
                match entries.get(&(name.clone(), arch.to_string())) {
                    None => failures.push(format!("{name}: not compiled for {arch}")),
                    Some(&(regs, st, ld)) => {
                        println!("{name:<34} {arch:>6} {regs:>5} {st:>7}/{ld:<6}");
                        if st > 0 || ld > 0 {
                            failures.push(format!("{name} on {arch}: {st} bytes spill stores, {ld} bytes spill loads"));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "ptxas check failed:\n{}", failures.join("\n"));
}

fn cuobjdump() -> Option<PathBuf> {
    let dir = Path::new(NVCC?).parent()?;
    let p = dir.join("cuobjdump");
    p.is_file().then_some(p)
}

/// (arch, function) → SASS text.
fn sass(stem: &str) -> BTreeMap<(String, String), String> {
    let tool = cuobjdump().expect("cuobjdump next to nvcc (scripts/install-cuda.sh installs it)");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dir = tool.parent().unwrap().to_path_buf();
    let new_path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path))).unwrap();
    let out = Command::new(&tool)
        .arg("-sass")
        .arg(fatbin_path(stem).expect("fatbin"))
        .env("PATH", new_path)
        .output()
        .expect("run cuobjdump");
    assert!(out.status.success(), "cuobjdump failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map: BTreeMap<(String, String), String> = BTreeMap::new();
    let (mut arch, mut func) = (String::new(), String::new());
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("arch = ") {
            arch = a.to_string();
        } else if let Some(f) = t.strip_prefix("Function : ") {
            func = f.to_string();
        } else if !func.is_empty() {
            let e = map.entry((arch.clone(), func.clone())).or_default();
            e.push_str(t);
            e.push('\n');
        }
    }
    map
}

#[test]
fn attention_sass_uses_tensor_cores_ldmatrix_and_cp_async() {
    if !have_nvcc("attention_sass_uses_tensor_cores_ldmatrix_and_cp_async") || cuobjdump().is_none() {
        assert!(!required() || cuobjdump().is_some(), "cuobjdump missing");
        return;
    }
    let fns = sass("attention");
    let attn: Vec<_> = fns.iter().filter(|((_, f), _)| f.starts_with("attention_d")).collect();
    assert!(attn.len() >= 12, "expected 3 head dims × 2 dtypes × 2 archs, found {}", attn.len());
    for ((arch, f), code) in attn {
        for instr in ["HMMA.16816.F32", "LDSM", "LDGSTS"] {
            assert!(code.contains(instr), "{f} on {arch}: no {instr} in the SASS");
        }
        println!(
            "{f:<26} {arch}: HMMA×{} LDSM×{} LDGSTS×{}",
            code.matches("HMMA").count(),
            code.matches("LDSM").count(),
            code.matches("LDGSTS").count()
        );
    }
}

#[test]
fn wgmma_attention_sass_uses_hgmma_without_serialisation() {
    if !have_nvcc("wgmma_attention_sass_uses_hgmma_without_serialisation") || cuobjdump().is_none() {
        assert!(!required() || cuobjdump().is_some(), "cuobjdump missing");
        return;
    }
    // ptxas says when it had to serialise wgmma or inject waits around the accumulators (C75xx
    // notes): the kernel would then be correct but its MMAs would not overlap anything.
    let log = ptxas_log("attention_sm90a").expect("ptxas report of kernels/attention_sm90a.cu");
    for bad in ["C7508", "C7510", "C7515", "C7517", "C7519", "serialized"] {
        assert!(!log.contains(bad), "ptxas on kernels/attention_sm90a.cu reports {bad}:\n{log}");
    }
    let fns = sass("attention_sm90a");
    let attn: Vec<_> = fns.iter().filter(|((_, f), _)| f.starts_with("attention_wgmma_")).collect();
    assert_eq!(attn.len(), 6, "expected 3 tile shapes × bf16 and f16 on sm_90a");
    for ((arch, f), code) in attn {
        assert_eq!(arch, "sm_90a", "{f}");
        for instr in ["HGMMA.64x64x16.F32", "HGMMA.64x72x16.F32", "LDGSTS", "WARPGROUP.ARRIVE"] {
            assert!(code.contains(instr), "{f} on {arch}: no {instr} in the SASS");
        }
        assert!(!code.contains("HMMA"), "{f}: mma.sync (HMMA) in the wgmma kernel");
        // Q in registers: its fragments come from ldmatrix, and no Q·Kᵀ wgmma reads A from shared memory.
        assert_eq!(f.contains("_qregs"), code.contains("LDSM"), "{f}: ldmatrix of Q exactly in the qregs kernels");
        println!(
            "{f:<34} {arch}: HGMMA×{} LDGSTS×{} LDSM×{}",
            code.matches("HGMMA").count(),
            code.matches("LDGSTS").count(),
            code.matches("LDSM").count()
        );
    }
}

#[test]
fn memory_bound_kernels_use_128_bit_loads() {
    if !have_nvcc("memory_bound_kernels_use_128_bit_loads") || cuobjdump().is_none() {
        assert!(!required() || cuobjdump().is_some(), "cuobjdump missing");
        return;
    }
    for (stem, prefix) in [("norm_modulate", "norm_modulate_"), ("qk_norm", "qk_norm_"), ("residual", "residual_")] {
        let fns = sass(stem);
        let found: Vec<_> = fns.iter().filter(|((_, f), _)| f.starts_with(prefix)).collect();
        assert!(!found.is_empty(), "kernels/{stem}.cu: no {prefix}* functions");
        for ((arch, f), code) in found {
            assert!(
                code.contains("LDG.E.128") || code.contains("LDG.E.ENL2.128"),
                "{f} on {arch}: no 128-bit global loads"
            );
            println!(
                "{f:<26} {arch}: LDG.E.128×{} STG.E.128×{}",
                code.matches("LDG.E.128").count() + code.matches("LDG.E.ENL2.128").count(),
                code.matches("STG.E.128").count()
            );
        }
    }
}

#[test]
fn shim_registrations_match_the_fatbin_entry_points() {
    // The shim can launch exactly the kernels the GPU has, and the CUDA backend's name → file
    // table (from the registrations) points at the module that holds each kernel.
    if !have_nvcc("shim_registrations_match_the_fatbin_entry_points") || cuobjdump().is_none() {
        assert!(!required() || cuobjdump().is_some(), "cuobjdump missing");
        return;
    }
    for stem in kernel_stems() {
        let entries: std::collections::BTreeSet<String> = sass(&stem).into_keys().map(|(_, f)| f).collect();
        let registered: std::collections::BTreeSet<String> =
            KERNELS.iter().filter(|k| k.file == stem).map(|k| k.name.to_string()).collect();
        assert_eq!(registered, entries, "kernels/{stem}.cu: the kernel table vs the fatbin's entry points");
    }
}
