//! What build.rs produced: the embedded fatbins (one per kernels/*.cu), the nvcc that built them,
//! ptxas' resource reports, and whether the SIMT-shim library is linked in.

include!(concat!(env!("OUT_DIR"), "/fatbins.rs"));

/// Where build.rs wrote the fatbins and `ptxas-<stem>.log` reports.
pub const OUT_DIR: &str = env!("OUT_DIR");

/// Whether `--device sim` is available in this build.
pub const SIM_BUILT: bool = cfg!(deltadit_sim);

/// ptxas' `-Xptxas -v` report for `kernels/<stem>.cu,` when nvcc ran.
pub fn ptxas_log(stem: &str) -> Option<String> {
    std::fs::read_to_string(std::path::Path::new(OUT_DIR).join(format!("ptxas-{stem}.log"))).ok()
}

/// The fatbin path of `kernels/<stem>.cu,` when nvcc ran.
pub fn fatbin_path(stem: &str) -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(OUT_DIR).join(format!("{stem}.fatbin"));
    p.is_file().then_some(p)
}
