//! Builds the kernels twice:
//!
//! 1. With nvcc (when found) into one fatbin per `kernels/<stem>.cu` — SASS for sm_80 and sm_90
//!    plus compute_90 PTX (`*_sm90a.cu`: sm_90a SASS only) — embedded into the crate for the CUDA
//!    backend. ptxas' `-v` report of
//!    each file is kept in OUT_DIR (`ptxas-<stem>.log`) for the spill check in tests/kernel_build.rs.
//!    Without nvcc the build still succeeds with one warning; the CUDA backend then reports
//!    "kernels not built" at run time.
//! 2. With the system C++ compiler through the SIMT shim (`kernels/sim/`), into the static library
//!    behind `--device sim`. It needs the CUDA headers (cuda_bf16.h/cuda_fp16.h) of the pinned
//!    toolchain for the host bf16/f16 types; without them the sim backend reports "not built".
//!
//! nvcc is looked up in $NVCC, $CUDA_HOME/bin, $PATH, then `.cuda/nvidia/cu13/bin` (where
//! scripts/install-cuda.sh puts it).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCH_FLAGS: &[&str] =
    &["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=[sm_90,compute_90]"];
/// Files named `*_sm90a.cu` use Hopper-only instructions (wgmma): SASS for sm_90a alone, which
/// runs on compute capability 9.0 only (the CUDA backend loads those modules there only).
const ARCH_FLAGS_SM90A: &[&str] = &["-gencode=arch=compute_90a,code=sm_90a"];

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernels = root.join("kernels");

    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "PATH", "DELTADIT_SIM_CXXFLAGS", "DELTADIT_NO_SIM", "DELTADIT_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(deltadit_sim)");

    let mut sources: Vec<PathBuf> = fs::read_dir(&kernels)
        .expect("kernels/ directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    let stems: Vec<String> = sources.iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();

    // DELTADIT_NO_NVCC / DELTADIT_NO_SIM skip a half of the build (faster iteration on Rust code).
    let nvcc = if env::var_os("DELTADIT_NO_NVCC").is_some() { None } else { find_nvcc(&root) };
    let fatbins = match &nvcc {
        Some(nvcc) => compile_fatbins(nvcc, &kernels, &sources, &stems, &out),
        None => {
            println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME, PATH, .cuda/): CUDA kernels not built; \
                 run scripts/install-cuda.sh to build them"
            );
            Vec::new()
        }
    };
    write_fatbin_table(&out, &fatbins, nvcc.as_deref(), &kernel_names(&sources, &stems));

    match find_nvcc(&root).as_deref().and_then(cuda_include_dir).or_else(|| cuda_include_dir_fallback(&root)) {
        _ if env::var_os("DELTADIT_NO_SIM").is_some() => {
            println!("cargo:warning=DELTADIT_NO_SIM set: sim backend not built")
        }
        Some(include) if kernels.join("sim/shim.h").exists() => {
            build_sim(&kernels, &include, &sources, &stems, &out);
            println!("cargo:rustc-cfg=deltadit_sim");
        }
        Some(_) => println!("cargo:warning=kernels/sim/shim.h missing: sim backend not built"),
        None => println!(
            "cargo:warning=CUDA headers (cuda_bf16.h) not found: the SIMT shim backend (--device sim) \
             is not built; run scripts/install-cuda.sh"
        ),
    }
}

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = env::var_os("NVCC") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(home) = env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("bin/nvcc"));
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(root.join(".cuda/nvidia/cu13/bin/nvcc"));
    candidates
        .into_iter()
        .find(|p| p.is_file() && Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `<cuda>/include` next to nvcc's `bin/`, when it holds the bf16 header.
fn cuda_include_dir(nvcc: &Path) -> Option<PathBuf> {
    let inc = nvcc.parent()?.parent()?.join("include");
    inc.join("cuda_bf16.h").is_file().then_some(inc)
}

fn cuda_include_dir_fallback(root: &Path) -> Option<PathBuf> {
    let inc = root.join(".cuda/nvidia/cu13/include");
    inc.join("cuda_bf16.h").is_file().then_some(inc)
}

fn compile_fatbins(
    nvcc: &Path,
    kernels: &Path,
    sources: &[PathBuf],
    stems: &[String],
    out: &Path,
) -> Vec<(String, PathBuf)> {
    // Two compiler processes at a time: the CI machines have two cores.
    let jobs: Vec<_> = sources.iter().zip(stems).collect();
    let results: Vec<(String, PathBuf, Result<(), String>)> = std::thread::scope(|s| {
        let chunks: Vec<_> = jobs.chunks(jobs.len().div_ceil(2).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(src, stem)| {
                            let fatbin = out.join(format!("{stem}.fatbin"));
                            let r = nvcc_one(nvcc, kernels, src, stem, &fatbin, out);
                            ((*stem).clone(), fatbin, r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut built = Vec::new();
    for (stem, fatbin, r) in results {
        match r {
            Ok(()) => built.push((stem, fatbin)),
            Err(e) => panic!("nvcc failed on kernels/{stem}.cu:\n{e}"),
        }
    }
    built
}

fn nvcc_one(nvcc: &Path, kernels: &Path, src: &Path, stem: &str, fatbin: &Path, out: &Path) -> Result<(), String> {
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .args(if stem.ends_with("_sm90a") { ARCH_FLAGS_SM90A } else { ARCH_FLAGS })
        .args(["-std=c++17", "-O3", "-lineinfo", "-Xptxas", "-v", "-Werror", "all-warnings"])
        .arg("-I")
        .arg(kernels)
        .arg("-o")
        .arg(fatbin)
        .arg(src);
    let output = cmd.output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    fs::write(out.join(format!("ptxas-{stem}.log")), &report).unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(report)
    }
}

/// (kernel, file stem) for every `DELTADIT_SIM_KERNEL(name, ...)` registration, so the CUDA
/// backend looks a kernel up in the one module that holds it.
fn kernel_names(sources: &[PathBuf], stems: &[String]) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (src, stem) in sources.iter().zip(stems) {
        let text = fs::read_to_string(src).unwrap_or_default();
        for part in text.split("DELTADIT_SIM_KERNEL(").skip(1) {
            let name = part.split(',').next().unwrap_or("").trim();
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                v.push((name.to_string(), stem.clone()));
            }
        }
    }
    v
}

fn write_fatbin_table(out: &Path, fatbins: &[(String, PathBuf)], nvcc: Option<&Path>, kernels: &[(String, String)]) {
    let mut s = String::new();
    s.push_str("/// (file stem, fatbin image) for every kernels/*.cu compiled by nvcc.\n");
    s.push_str("pub static FATBINS: &[(&str, &[u8])] = &[\n");
    for (stem, path) in fatbins {
        writeln!(s, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
    }
    s.push_str("];\n");
    s.push_str("/// (kernel name, file stem) of every kernel registered in kernels/*.cu.\n");
    s.push_str("pub static KERNEL_FILES: &[(&str, &str)] = &[\n");
    for (k, stem) in kernels {
        writeln!(s, "    ({k:?}, {stem:?}),").unwrap();
    }
    s.push_str("];\n");
    writeln!(s, "/// The nvcc that built them, if any.").unwrap();
    let nvcc = nvcc.map(|p| p.display().to_string());
    writeln!(s, "pub const NVCC: Option<&str> = {nvcc:?};").unwrap();
    fs::write(out.join("fatbins.rs"), s).unwrap();
}

fn build_sim(kernels: &Path, include: &Path, sources: &[PathBuf], stems: &[String], out: &Path) {
    // One registry TU calls each file's registration function; this keeps every kernel object in
    // the link (a static library member nobody references would be dropped with its kernels).
    let mut reg = String::from("// generated by build.rs\n");
    for stem in stems {
        writeln!(reg, "extern \"C\" void deltadit_sim_register_{stem}(void);").unwrap();
    }
    reg.push_str("extern \"C\" void deltadit_sim_register_all(void) {\n");
    for stem in stems {
        writeln!(reg, "    deltadit_sim_register_{stem}();").unwrap();
    }
    reg.push_str("}\n");
    let reg_path = out.join("sim_registry.cpp");
    fs::write(&reg_path, reg).unwrap();

    let mut shim_cpp: Vec<PathBuf> = fs::read_dir(kernels.join("sim"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    shim_cpp.sort();

    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .include(kernels)
        .include(include)
        .define("DELTADIT_SIM", None)
        .opt_level(2)
        .flag_if_supported("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(false);
    if let Ok(extra) = env::var("DELTADIT_SIM_CXXFLAGS") {
        for f in extra.split_whitespace() {
            b.flag(f);
        }
    }
    // The .cu files are compiled as C++ (`-x c++` precedes each of them); the shim's own sources
    // and the registry are plain .cpp and come after `-x none` in their own build.
    let mut cu = b.clone();
    cu.flag("-x").flag("c++");
    for src in sources {
        cu.file(src);
    }
    let objects = cu.compile_intermediates();
    for src in &shim_cpp {
        b.file(src);
    }
    b.file(&reg_path);
    for o in objects {
        b.object(o);
    }
    b.compile("deltadit_sim");
}
