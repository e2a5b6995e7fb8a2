//! `--cache SPEC` parsing: `none`, `delta` (preset), `delta:n=3,nc=5,b=6`,
//! `delta-adaptive:threshold=0.12,warmup=2,max-cached=1[,nc=..,b=..]`, `fora:n=3,calibrator=taylor1`,
//! `first-block:threshold=0.2,max-cached=2,calibrator=taylor1` (`max-cached=none`: no cap), `schedule:mask=1101…` (one bit per step),
//! `dbcache:fn=1,bn=0,threshold=0.12,warmup=2,max-cached=none,max-continuous=none,calibrator=taylor1`.
//! Unset values come from the presets for the model and step count when the policy is built.
//!
//! Parameters by policy:
//!
//! | policy | parameter | meaning | default |
//! | --- | --- | --- | --- |
//! | `delta` | `n` | cache interval: a full step when step % n == 0 | preset (3; at ≤ 8 steps the paper's 2) |
//! | | `nc` | cached blocks of a cached step (1 ≤ nc < L) | preset (⌊⅚ L⌋; at ≤ 8 steps 1/7 of L) |
//! | | `b` | stage boundary, a step index: rear blocks cached before it, front blocks from it on | preset |
//! | | `order` | `paper` or `reverse` (the stages swapped) | preset (SD3: reverse) |
//! | | `calibrator` | `none` (reuse Δ_front/Δ_rear, the paper), `taylor1`/`taylor2` (forecast them, cache-dit's TaylorSeer) | taylor1 (at ≤ 8 steps none) |
//! | `delta-adaptive` | `threshold` | accumulated block-0 input change that forces a full step | 0.12 |
//! | | `warmup` | full steps at the start | 2 |
//! | | `max-cached` | most cached steps in a row | 1 |
//! | | `nc`, `b` | as `delta` | nc: the paper's ¾ of L ([`Delta::paper`]); b: 0 (front blocks cached on every cached step) |
//! | `fora` | `n` | full step every n steps; branch outputs reused between | 3 |
//! | | `calibrator` | `none` (reuse the branch outputs, FORA as published), `taylor1`/`taylor2` (forecast them before their gates, cache-dit's TaylorSeer) | taylor1 |
//! | `first-block` | `threshold` | block 0's residual change (relative L1) below which the rest is skipped | 0.2 |
//! | | `max-cached` | most cached steps in a row, or `none` | 2 |
//! | | `calibrator` | `none` (reuse the residual of blocks 1..L), `taylor1`/`taylor2` (forecast it) | taylor1 |
//! | `dbcache` | `fn` | Fn: first blocks, always run; their residual decides (1 ≤ fn) | 1 |
//! | | `bn` | Bn: last blocks, always run (fn + bn < L) | 0 |
//! | | `threshold` | relative L1 change of the Fn residual against the last full step's below which the middle is reused (≥ 1: always) | 0.12 |
//! | | `warmup` | full steps at the start (W) | 2 |
//! | | `max-cached` | most cached steps of a run (M), or `none` | none |
//! | | `max-continuous` | most cached steps in a row (MC), or `none` | none |
//! | | `calibrator` | `none` (reuse the middle residual), `taylor1`/`taylor2` (cache-dit's TaylorSeer forecast of order 1/2) | taylor1 (cache-dit's own default is none: write `calibrator=none` for its plain DBCache) |
//! | | `steps-mask` | cache-dit's `steps_computation_mask` (dynamic): one bit per step, 1 = always a full step, 0 = decided by the threshold; the warm-up is cut to the leading ones | none |
//! | | `verify` | verified forecasting (not in cache-dit): the middle's last block runs for real on the forecast input; a relative L1 gap to the forecast above this falls back to a full step | none (no check) |
//! | `schedule` | `mask` | one bit per step: 1 runs every block and stores the whole stack's Δ, 0 reuses it and runs no block; the first step must be 1 (`deltadit calibrate` searches one) | required |

use super::{CachePolicy, Calibrator, DbCache, Delta, DeltaAdaptive, FirstBlock, Fora, NoCache, Schedule};
use crate::model::Family;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A parsed `--cache` value, not yet bound to a model and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSpec {
    policy: String,
    params: BTreeMap<String, String>,
}

const POLICIES: &[(&str, &[&str])] = &[
    ("none", &[]),
    ("delta", &["n", "nc", "b", "order", "calibrator"]),
    ("delta-adaptive", &["threshold", "warmup", "max-cached", "nc", "b"]),
    ("fora", &["n", "calibrator"]),
    ("first-block", &["threshold", "max-cached", "calibrator"]),
    (
        "dbcache",
        &["fn", "bn", "threshold", "warmup", "max-cached", "max-continuous", "calibrator", "verify", "steps-mask"],
    ),
    ("schedule", &["mask"]),
];

impl FromStr for CacheSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, rest) = s.split_once(':').unwrap_or((s, ""));
        let name = name.trim();
        let allowed = POLICIES.iter().find(|(p, _)| *p == name).map(|(_, a)| *a).ok_or_else(|| {
            Error::param(
                "cache",
                s,
                format!("a policy among {}", POLICIES.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")),
            )
        })?;
        let mut params = BTreeMap::new();
        for kv in rest.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| Error::param("cache", kv, "key=value"))?;
            let k = k.trim().replace('_', "-");
            if !allowed.contains(&k.as_str()) {
                return Err(Error::param(
                    format!("cache {name} parameter"),
                    &k,
                    if allowed.is_empty() {
                        "none (this policy takes no parameters)".to_string()
                    } else {
                        format!("one of {}", allowed.join(", "))
                    },
                ));
            }
            params.insert(k, v.trim().to_string());
        }
        Ok(CacheSpec { policy: name.to_string(), params })
    }
}

impl fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.policy)?;
        if !self.params.is_empty() {
            let kv: Vec<String> = self.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, ":{}", kv.join(","))?;
        }
        Ok(())
    }
}

impl CacheSpec {
    /// The policy's name (`none`, `delta`, …).
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// `none`.
    pub fn none() -> Self {
        CacheSpec { policy: "none".into(), params: BTreeMap::new() }
    }

    fn usize_param(&self, k: &str) -> Result<Option<usize>> {
        self.params
            .get(k)
            .map(|v| v.parse::<usize>().map_err(|_| Error::param(k, v, "a non-negative integer")))
            .transpose()
    }

    fn f32_param(&self, k: &str) -> Result<Option<f32>> {
        self.params.get(k).map(|v| v.parse::<f32>().map_err(|_| Error::param(k, v, "a number"))).transpose()
    }

    /// A cap: a count ≥ 1, or `none`.
    fn cap_param(&self, k: &str, default: Option<usize>) -> Result<Option<usize>> {
        match self.params.get(k).map(String::as_str) {
            None => Ok(default),
            Some("none") => Ok(None),
            Some(_) => self.usize_param(k),
        }
    }

    /// `calibrator=`, or `default` where the spec leaves it out.
    fn calibrator_param_or(&self, default: Calibrator) -> Result<Calibrator> {
        match self.params.get("calibrator").map(String::as_str) {
            None => Ok(default),
            Some("none") => Ok(Calibrator::None),
            Some("taylor1") => Ok(Calibrator::Taylor(1)),
            Some("taylor2") => Ok(Calibrator::Taylor(2)),
            Some(other) => Err(Error::param("calibrator", other, "none, taylor1 or taylor2")),
        }
    }

    /// The policy for a model of `layers` blocks sampled in `steps` steps, validated.
    pub fn build(&self, family: Family, layers: usize, steps: usize) -> Result<Box<dyn CachePolicy>> {
        let preset = Delta::preset(family, layers, steps);
        Ok(match self.policy.as_str() {
            "none" => Box::new(NoCache),
            "delta" => {
                let reverse = match self.params.get("order").map(String::as_str) {
                    None => preset.reverse,
                    Some("paper") => false,
                    Some("reverse") => true,
                    Some(other) => return Err(Error::param("order", other, "paper or reverse")),
                };
                Box::new(
                    Delta::new(
                        self.usize_param("n")?.unwrap_or(preset.n),
                        self.usize_param("nc")?.unwrap_or(preset.nc),
                        self.usize_param("b")?.unwrap_or(preset.b),
                        layers,
                        steps,
                    )?
                    .reversed(reverse)
                    .calibrated(self.calibrator_param_or(preset.calibrator)?),
                )
            }
            "delta-adaptive" => Box::new(DeltaAdaptive::new(
                self.f32_param("threshold")?.unwrap_or(DeltaAdaptive::DEFAULT_THRESHOLD),
                self.usize_param("warmup")?.unwrap_or(DeltaAdaptive::DEFAULT_WARMUP.min(steps)),
                self.usize_param("max-cached")?.unwrap_or(DeltaAdaptive::DEFAULT_MAX_CACHED),
                self.usize_param("nc")?.unwrap_or(Delta::paper(family, layers, steps).nc),
                self.usize_param("b")?.unwrap_or(DeltaAdaptive::DEFAULT_B),
                layers,
                steps,
            )?),
            "fora" => Box::new(
                Fora::new(self.usize_param("n")?.unwrap_or(Fora::DEFAULT_N))?
                    .calibrated(self.calibrator_param_or(Fora::DEFAULT_CALIBRATOR)?),
            ),
            "first-block" => Box::new(
                FirstBlock::new(
                    self.f32_param("threshold")?.unwrap_or(FirstBlock::DEFAULT_THRESHOLD),
                    self.cap_param("max-cached", FirstBlock::DEFAULT_MAX_CACHED)?,
                )?
                .calibrated(self.calibrator_param_or(FirstBlock::DEFAULT_CALIBRATOR)?),
            ),
            "dbcache" => Box::new(
                DbCache::new(
                    self.usize_param("fn")?.unwrap_or(DbCache::DEFAULT_FN),
                    self.usize_param("bn")?.unwrap_or(DbCache::DEFAULT_BN),
                    self.f32_param("threshold")?.unwrap_or(DbCache::DEFAULT_THRESHOLD),
                    self.usize_param("warmup")?.unwrap_or(DbCache::DEFAULT_WARMUP),
                    self.cap_param("max-cached", None)?,
                    self.cap_param("max-continuous", None)?,
                    self.calibrator_param_or(DbCache::DEFAULT_CALIBRATOR)?,
                    layers,
                )?
                .verified(self.f32_param("verify")?)
                .and_then(|p| match self.params.get("steps-mask") {
                    Some(m) => p.with_steps_mask(m, steps),
                    None => Ok(p),
                })?,
            ),
            "schedule" => Box::new(Schedule::parse(
                self.params.get("mask").ok_or_else(|| {
                    Error::param(
                        "mask",
                        "(missing)",
                        "schedule:mask=1101… (one bit per step; `deltadit calibrate` finds one)",
                    )
                })?,
                layers,
                steps,
            )?),
            other => {
                return Err(Error::param(
                    "cache",
                    other,
                    "a policy among none, delta, delta-adaptive, fora, first-block, dbcache, schedule",
                ))
            }
        })
    }
}
