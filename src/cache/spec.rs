//! `--cache SPEC` parsing: `none`, `delta` (preset), `delta:n=3,nc=5,b=6`,
//! `delta-adaptive:threshold=0.1,warmup=2,max-cached=1[,nc=..,b=..]`, `fora:n=3`,
//! `first-block:threshold=0.2[,max-cached=1|none]`, `schedule:mask=1101…` (one bit per step). Unset values come from the presets for the model
//! and step count when the policy is built.

use super::{CachePolicy, Delta, DeltaAdaptive, FirstBlock, Fora, NoCache, Schedule};
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
    ("delta", &["n", "nc", "b", "order"]),
    ("delta-adaptive", &["threshold", "warmup", "max-cached", "nc", "b"]),
    ("fora", &["n"]),
    ("first-block", &["threshold", "max-cached"]),
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
                    .reversed(reverse),
                )
            }
            "delta-adaptive" => Box::new(DeltaAdaptive::new(
                self.f32_param("threshold")?.unwrap_or(DeltaAdaptive::DEFAULT_THRESHOLD),
                self.usize_param("warmup")?.unwrap_or(DeltaAdaptive::DEFAULT_WARMUP.min(steps)),
                self.usize_param("max-cached")?.unwrap_or(DeltaAdaptive::DEFAULT_MAX_CACHED),
                self.usize_param("nc")?.unwrap_or(preset.nc),
                self.usize_param("b")?.unwrap_or(preset.b),
                layers,
                steps,
            )?),
            "fora" => Box::new(Fora::new(self.usize_param("n")?.unwrap_or(Fora::DEFAULT_N))?),
            "first-block" => Box::new(FirstBlock::new(
                self.f32_param("threshold")?.unwrap_or(FirstBlock::DEFAULT_THRESHOLD),
                match self.params.get("max-cached").map(String::as_str) {
                    None => FirstBlock::DEFAULT_MAX_CACHED,
                    Some("none") => None,
                    Some(_) => self.usize_param("max-cached")?,
                },
            )?),
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
                    "a policy among none, delta, delta-adaptive, fora, first-block, schedule",
                ))
            }
        })
    }
}
