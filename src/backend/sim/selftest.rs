//! Self-tests of the SIMT shim (kernels/sim/selftest.cpp): each runs test kernels through the
//! shim and compares them with their definition. Run by tests/sim_shim.rs.

use std::ffi::{c_char, c_int, CStr, CString};

extern "C" {
    fn deltadit_sim_selftest(name: *const c_char, msg: *mut c_char, msg_cap: usize) -> c_int;
    fn deltadit_sim_selftest_names() -> *const c_char;
}

/// Names of all shim self-tests, in a sensible order.
pub fn names() -> Vec<String> {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let s = unsafe { CStr::from_ptr(deltadit_sim_selftest_names()) };
    s.to_string_lossy().split_whitespace().map(str::to_string).collect()
}

/// Runs one self-test: Ok(summary) when it passes, Err(reason) when it fails or is unknown.
pub fn run(name: &str) -> Result<String, String> {
    let cname = CString::new(name).map_err(|_| format!("test name {name:?} has a NUL byte"))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: the shim writes at most msg_cap bytes (NUL-terminated) into buf.
    let rc = unsafe { deltadit_sim_selftest(cname.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let msg = String::from_utf8_lossy(&buf[..end]).into_owned();
    match rc {
        0 => Ok(msg),
        2 => Err(format!("unknown shim self-test {name:?}")),
        _ => Err(msg),
    }
}
