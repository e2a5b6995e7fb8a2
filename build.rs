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
    write_fatbin_table(&out, &fatbins, nvcc.as_deref());
    let (rows, attention, kinds) = kernel_rows(&kernels, &sources, &stems);
    write_kernel_table(&out, &rows, &attention, &kinds);

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

/// One kernel of kernels/*.cu: its entry point, the file that defines it and its parameter struct.
struct KernelRow {
    name: String,
    file: String,
    params: String,
}

/// One row of kernels/attention_variants.h.
struct AttentionRow {
    kind: String,
    stem: String,
    file: String,
    head_dim: String,
    threads: String,
    block_q: String,
    smem: String,
}

/// The kernels of every kernels/*.cu: the plain `DELTADIT_SIM_KERNEL(name, Params)` registrations of
/// each file, and for the files that expand a table of kernels/attention_variants.h
/// (`DELTADIT_ATTENTION_<TABLE>(...)` at file scope) the rows of that table.
fn kernel_rows(
    kernels: &Path,
    sources: &[PathBuf],
    stems: &[String],
) -> (Vec<KernelRow>, Vec<AttentionRow>, Vec<Vec<String>>) {
    let variants = fs::read_to_string(kernels.join("attention_variants.h")).expect("kernels/attention_variants.h");
    let kinds = macro_calls(&macro_body(&variants, "DELTADIT_ATTENTION_KINDS"), "KIND");
    let mut rows = Vec::new();
    let mut attention = Vec::new();
    for (src, stem) in sources.iter().zip(stems) {
        let text = fs::read_to_string(src).unwrap_or_default();
        for args in macro_calls(&text, "DELTADIT_SIM_KERNEL") {
            let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if args.len() == 2 && plain(&args[0]) {
                rows.push(KernelRow { name: args[0].clone(), file: stem.clone(), params: args[1].clone() });
            }
        }
        for table in ["MMA", "SM90A"] {
            let name = format!("DELTADIT_ATTENTION_{table}");
            if !text.contains(&format!("{name}(ATTN_ENTRY)")) {
                continue;
            }
            for a in macro_calls(&macro_body(&variants, &name), "X") {
                assert_eq!(a.len(), 7, "kernels/attention_variants.h: {name} row {a:?} needs 7 columns");
                for dt in ["bf16", "f16"] {
                    rows.push(KernelRow {
                        name: format!("{}_{dt}", a[1]),
                        file: stem.clone(),
                        params: "AttentionParams".into(),
                    });
                }
                attention.push(AttentionRow {
                    kind: a[0].clone(),
                    stem: a[1].clone(),
                    file: stem.clone(),
                    head_dim: a[2].clone(),
                    threads: a[4].clone(),
                    block_q: a[5].clone(),
                    smem: a[6].clone(),
                });
            }
        }
    }
    (rows, attention, kinds)
}

/// The replacement text of `#define NAME(...)`, continuation lines joined.
fn macro_body(text: &str, name: &str) -> String {
    let start = text.find(&format!("#define {name}(")).unwrap_or_else(|| panic!("#define {name} not found"));
    let mut body = String::new();
    for line in text[start..].lines() {
        let cont = line.trim_end().ends_with('\\');
        body.push_str(line.trim_end().trim_end_matches('\\'));
        body.push(' ');
        if !cont {
            break;
        }
    }
    body.split_once(')').map(|(_, rest)| rest.to_string()).unwrap_or_default()
}

/// The argument lists of every call `name(a, b, …)` in `text`, outside comments and string
/// literals, split at top-level commas (string literals kept as Rust/C string literals).
fn macro_calls(text: &str, name: &str) -> Vec<Vec<String>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            i += text[i..].find('\n').unwrap_or(b.len() - i);
        } else if b[i..].starts_with(b"/*") {
            i += text[i..].find("*/").map_or(b.len() - i, |e| e + 2);
        } else if b[i] == b'"' {
            i += 1 + string_len(&b[i + 1..]) + 1;
        } else if b[i..].starts_with(name.as_bytes())
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && b.get(i + name.len()) == Some(&b'(')
        {
            let (args, len) = call_args(&text[i + name.len() + 1..]);
            out.push(args);
            i += name.len() + 1 + len;
        } else {
            i += 1;
        }
    }
    out
}

/// Bytes of a string literal's contents up to its closing quote.
fn string_len(b: &[u8]) -> usize {
    let mut j = 0;
    while j < b.len() && b[j] != b'"' {
        j += if b[j] == b'\\' { 2 } else { 1 };
    }
    j.min(b.len())
}

/// The arguments of a call whose `(` precedes `text`, and the bytes up to and including its `)`.
fn call_args(text: &str) -> (Vec<String>, usize) {
    let b = text.as_bytes();
    let (mut depth, mut j, mut cur, mut args) = (0usize, 0usize, String::new(), Vec::new());
    while j < b.len() {
        match b[j] {
            b'"' => {
                let n = string_len(&b[j + 1..]);
                cur.push_str(&text[j..j + n + 2]);
                j += n + 2;
                continue;
            }
            b'(' => depth += 1,
            b')' if depth == 0 => {
                args.push(cur.trim().to_string());
                return (args, j + 1);
            }
            b')' => depth -= 1,
            b',' if depth == 0 => {
                args.push(std::mem::take(&mut cur).trim().to_string());
                j += 1;
                continue;
            }
            _ => {}
        }
        cur.push(b[j] as char);
        j += 1;
    }
    (args, j)
}

/// `attention_d72_bf16` → `AttentionD72Bf16`.
fn camel(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Element-type suffixes a kernel name may end with; the rest of the name is its family.
const SUFFIXES: &[&str] = &["bf16", "f16", "f32", "u16", "u32"];

/// `kernel_table.rs`: the `KernelId` of every kernel, their names, files and parameter structs, the
/// per-dtype families launchers pick from, and the attention kinds and variants.
fn write_kernel_table(out: &Path, rows: &[KernelRow], attention: &[AttentionRow], kinds: &[Vec<String>]) {
    let mut s = String::from("// generated by build.rs from kernels/*.cu and kernels/attention_variants.h\n\n");
    s.push_str("/// Every kernel of kernels/*.cu, by entry point.\n");
    s.push_str("#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]\n#[allow(missing_docs)]\npub enum KernelId {\n");
    for r in rows {
        writeln!(s, "    {},", camel(&r.name)).unwrap();
    }
    s.push_str("}\n\n");
    writeln!(s, "/// Number of kernels.\npub const KERNEL_COUNT: usize = {};\n", rows.len()).unwrap();
    s.push_str("impl KernelId {\n    /// Every kernel, in the order of [`KERNELS`].\n");
    writeln!(s, "    pub const ALL: [KernelId; {}] = [", rows.len()).unwrap();
    for r in rows {
        writeln!(s, "        KernelId::{},", camel(&r.name)).unwrap();
    }
    s.push_str("    ];\n}\n\n");
    s.push_str("/// Name, file and parameter struct of each kernel, indexed by `KernelId as usize`.\n");
    writeln!(s, "pub static KERNELS: [KernelInfo; {}] = [", rows.len()).unwrap();
    for r in rows {
        writeln!(s, "    KernelInfo {{ name: {:?}, file: {:?}, params: {:?} }},", r.name, r.file, r.params).unwrap();
    }
    s.push_str("];\n\n");
    // Families: kernels that differ only in their element-type suffix.
    let mut families: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for r in rows {
        if let Some((base, sfx)) = r.name.rsplit_once('_').filter(|(_, x)| SUFFIXES.contains(x)) {
            match families.iter_mut().find(|(b, _)| b == base) {
                Some((_, v)) => v.push((sfx.to_string(), camel(&r.name))),
                None => families.push((base.to_string(), vec![(sfx.to_string(), camel(&r.name))])),
            }
        }
    }
    s.push_str("/// The kernels of one op that differ only in their element type, by suffix.\npub mod family {\n    use super::{KernelFamily, KernelId};\n");
    for (base, v) in &families {
        let list: Vec<String> = v.iter().map(|(x, k)| format!("({x:?}, KernelId::{k})")).collect();
        writeln!(
            s,
            "    /// `{base}_*`\n    pub const {}: KernelFamily = KernelFamily {{ name: {base:?}, variants: &[{}] }};",
            base.to_uppercase(),
            list.join(", ")
        )
        .unwrap();
    }
    s.push_str("}\n\n");
    // The attention kernel choices.
    s.push_str("/// Which attention kernel a kernel backend launches where a head dim has more than one\n/// (kernels/attention_variants.h). Set with `Sim::set_attention_kernel` / `Cuda::set_attention_kernel`.\n");
    s.push_str(
        "#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]\n#[non_exhaustive]\npub enum AttentionKernel {\n",
    );
    for (i, k) in kinds.iter().enumerate() {
        assert_eq!(k.len(), 3, "kernels/attention_variants.h: KIND row {k:?} needs 3 columns");
        writeln!(s, "    #[doc = {}]", k[2]).unwrap();
        if i == 0 {
            s.push_str("    #[default]\n");
        }
        writeln!(s, "    {},", k[0]).unwrap();
    }
    s.push_str("}\n\nimpl AttentionKernel {\n    /// Every choice, the default first.\n");
    writeln!(
        s,
        "    pub const ALL: [AttentionKernel; {}] = [{}];",
        kinds.len(),
        kinds.iter().map(|k| format!("AttentionKernel::{}", k[0])).collect::<Vec<_>>().join(", ")
    )
    .unwrap();
    s.push_str("    /// The name `parse` accepts (`mma`, `wgmma`, …).\n    pub const fn name(self) -> &'static str {\n        match self {\n");
    for k in kinds {
        writeln!(s, "            AttentionKernel::{} => {},", k[0], k[1]).unwrap();
    }
    s.push_str("        }\n    }\n}\n\n");
    s.push_str("/// Every attention entry point pair (one row of kernels/attention_variants.h).\n");
    writeln!(s, "pub static ATTENTION_VARIANTS: [AttentionVariant; {}] = [", attention.len()).unwrap();
    for a in attention {
        writeln!(
            s,
            "    AttentionVariant {{ kernel: AttentionKernel::{}, head_dim: {}, file: {:?}, threads: {}, block_q: {}, smem: {}, bf16: KernelId::{}, f16: KernelId::{} }},",
            a.kind, a.head_dim, a.file, a.threads, a.block_q, a.smem, camel(&format!("{}_bf16", a.stem)), camel(&format!("{}_f16", a.stem))
        )
        .unwrap();
    }
    s.push_str("];\n");
    fs::write(out.join("kernel_table.rs"), s).unwrap();
}

fn write_fatbin_table(out: &Path, fatbins: &[(String, PathBuf)], nvcc: Option<&Path>) {
    let mut s = String::new();
    s.push_str("/// (file stem, fatbin image) for every kernels/*.cu compiled by nvcc.\n");
    s.push_str("pub static FATBINS: &[(&str, &[u8])] = &[\n");
    for (stem, path) in fatbins {
        writeln!(s, "    ({stem:?}, include_bytes!({:?})),", path.display().to_string()).unwrap();
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
