//! `schedule:mask=1101…`: a per-step compute mask, as searched schedules (LeMiCa, Gao et al.
//! 2025) give it. Step i with mask bit 1 is a full step that stores the deviation of the whole
//! block stack, Δ = h_L − h_0; a step with bit 0 skips every block: h_L = h_0 + Δ (the current
//! step's h_0 flows through, as in Δ-DiT's Δ-Cache, over all L blocks). Embedding, final layer
//! and scheduler step run on every step, so a cached step costs 0 block evaluations and a mask
//! of K ones costs K / steps of the uncached run.
//!
//! `deltadit calibrate` searches the mask: [`edges`] lists the (full step i → next full step j)
//! edges of the step DAG, the calibrator measures the error each causes alone, and
//! [`best_path`] picks, for a number of full steps, the path of least total error (dynamic
//! programming over the DAG, as LeMiCa does).

use super::{CacheNeeds, CachePolicy, StepInfo, StepPlan};
use crate::{Error, Result};

/// The `schedule` policy; made by [`Schedule::new`] or [`Schedule::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Schedule {
    /// per step: true = full step, false = every block cached
    pub mask: Vec<bool>,
    layers: usize,
}

impl Schedule {
    /// Checks the mask against the step count (one bit per step, the first step full: a cached
    /// step needs a Δ stored before it) and the model depth.
    pub fn new(mask: Vec<bool>, layers: usize, steps: usize) -> Result<Self> {
        let text = Self::bits(&mask);
        if mask.len() != steps {
            return Err(Error::param(
                "mask",
                &text,
                format!("one bit per step: {steps} bits of 1 (full step) or 0 (cached), not {}", mask.len()),
            ));
        }
        if mask.first() != Some(&true) {
            return Err(Error::param("mask", &text, "a mask whose first bit is 1 (the first step runs in full)"));
        }
        if layers < 1 {
            return Err(Error::param("layers", layers, "≥ 1"));
        }
        Ok(Schedule { mask, layers })
    }

    /// A mask written as `1101…` (one character per step).
    pub fn parse(mask: &str, layers: usize, steps: usize) -> Result<Self> {
        let bits = super::parse_step_bits("mask", mask, "0 (cached step) and 1 (full step)", steps)?;
        Self::new(bits, layers, steps)
    }

    /// `1101…`
    pub fn bits(mask: &[bool]) -> String {
        super::step_bits(mask)
    }

    /// The mask of a path of full steps (the DAG's nodes) over `steps` steps.
    pub fn mask_of(path: &[usize], steps: usize) -> Vec<bool> {
        let mut m = vec![false; steps];
        for &i in path {
            if i < steps {
                m[i] = true;
            }
        }
        m
    }
}

impl CachePolicy for Schedule {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn params(&self) -> String {
        format!("mask={}", Self::bits(&self.mask))
    }

    fn needs(&self) -> CacheNeeds {
        CacheNeeds { front: Some(self.layers), ..Default::default() }
    }

    fn plan(&mut self, info: &StepInfo) -> StepPlan {
        let i = info.step;
        if self.mask.get(i).copied().unwrap_or(true) {
            // store Δ only when the next step reads it
            let next_cached = self.mask.get(i + 1).is_some_and(|&b| !b);
            StepPlan::Full { store_front: next_cached, store_rear: false, store_branches: false, store_rest: false }
        } else {
            StepPlan::CachedFront(self.layers)
        }
    }
}

/// The edges (i, j) of the step DAG of `steps` steps: a full step i, cached steps i+1..j, the
/// next full step j. The first and the last step are always full (LeMiCa's graph): nodes
/// 0..steps, edges i < j, `steps·(steps−1)/2` of them (190 at 20 steps).
pub fn edges(steps: usize) -> Vec<(usize, usize)> {
    (0..steps).flat_map(|i| (i + 1..steps).map(move |j| (i, j))).collect()
}

/// The path 0 = p_0 < p_1 < … < p_{k−1} = steps − 1 of exactly `full` nodes (full steps) that
/// minimises the sum of `cost(i, j)` over its edges; None when no such path exists (`full` < 2
/// with more than one step, or `full` > `steps`). One step: the path `[0]`.
///
/// Dynamic programming over the DAG: `best[k][j] = min over i < j of best[k−1][i] + cost(i, j)`,
/// O(full · steps²) cost evaluations.
pub fn best_path(steps: usize, full: usize, cost: &dyn Fn(usize, usize) -> f64) -> Option<(Vec<usize>, f64)> {
    if steps == 0 || full == 0 || full > steps {
        return None;
    }
    if steps == 1 {
        return (full == 1).then(|| (vec![0], 0.0));
    }
    if full < 2 {
        return None;
    }
    let inf = f64::INFINITY;
    // best[k][j]: least cost of a path from 0 to j through k + 1 nodes; from[k][j]: its last edge's start
    let mut best = vec![vec![inf; steps]; full];
    let mut from = vec![vec![usize::MAX; steps]; full];
    best[0][0] = 0.0;
    for k in 1..full {
        for j in 1..steps {
            for i in 0..j {
                if best[k - 1][i].is_finite() {
                    let c = best[k - 1][i] + cost(i, j);
                    if c < best[k][j] {
                        best[k][j] = c;
                        from[k][j] = i;
                    }
                }
            }
        }
    }
    let total = best[full - 1][steps - 1];
    if !total.is_finite() {
        return None;
    }
    let mut path = vec![steps - 1];
    let (mut k, mut j) = (full - 1, steps - 1);
    while k > 0 {
        j = from[k][j];
        k -= 1;
        path.push(j);
    }
    path.reverse();
    Some((path, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn plans(s: &mut Schedule, steps: usize, layers: usize) -> Vec<StepPlan> {
        crate::cache::schedule(s, steps, layers)
    }

    #[test]
    fn decisions_follow_the_mask() {
        let mut rng = Rng::new(7);
        for _ in 0..50 {
            let steps = 1 + (rng.next_u64() % 25) as usize;
            let layers = 1 + (rng.next_u64() % 12) as usize;
            let mut mask: Vec<bool> = (0..steps).map(|_| rng.next_u64().is_multiple_of(2)).collect();
            mask[0] = true;
            let mut s = Schedule::new(mask.clone(), layers, steps).unwrap();
            assert_eq!(s.needs(), CacheNeeds { front: Some(layers), ..Default::default() });
            let p = plans(&mut s, steps, layers);
            for (i, plan) in p.iter().enumerate() {
                if mask[i] {
                    let store = i + 1 < steps && !mask[i + 1];
                    assert_eq!(
                        *plan,
                        StepPlan::Full {
                            store_front: store,
                            store_rear: false,
                            store_branches: false,
                            store_rest: false
                        },
                        "step {i} of {}",
                        Schedule::bits(&mask)
                    );
                    assert_eq!(plan.blocks_run(layers), layers);
                } else {
                    assert_eq!(*plan, StepPlan::CachedFront(layers));
                    assert_eq!(plan.blocks_run(layers), 0);
                }
            }
            let ones = mask.iter().filter(|&&b| b).count();
            assert_eq!(p.iter().map(|x| x.blocks_run(layers)).sum::<usize>(), ones * layers);
        }
    }

    #[test]
    fn parse_checks_length_first_bit_and_characters() {
        let s = Schedule::parse("1101", 6, 4).unwrap();
        assert_eq!(s.mask, [true, true, false, true]);
        assert_eq!(s.params(), "mask=1101");
        for (mask, steps, want) in [
            ("110", 4, "4 bits"),
            ("11011", 4, "4 bits"),
            ("0111", 4, "first bit is 1"),
            ("11x1", 4, "0 (cached step) and 1"),
            ("", 4, "4 bits"),
            ("1101", 5, "5 bits"),
        ] {
            let e = Schedule::parse(mask, 6, steps).unwrap_err().to_string();
            assert!(e.contains("mask") && e.contains(want), "{mask}: {e}");
        }
    }

    #[test]
    fn edges_of_twenty_steps() {
        let e = edges(20);
        assert_eq!(e.len(), 190);
        assert!(e.iter().all(|&(i, j)| i < j && j < 20));
    }

    /// Every path 0 → steps−1 through exactly `full` nodes, by enumerating the subsets of the
    /// inner steps.
    fn brute_force(steps: usize, full: usize, cost: &dyn Fn(usize, usize) -> f64) -> Option<f64> {
        let inner = steps - 2;
        let mut best: Option<f64> = None;
        for bits in 0u32..(1 << inner) {
            if bits.count_ones() as usize + 2 != full {
                continue;
            }
            let mut path = vec![0];
            path.extend((0..inner).filter(|k| bits >> k & 1 == 1).map(|k| k + 1));
            path.push(steps - 1);
            let c: f64 = path.windows(2).map(|w| cost(w[0], w[1])).sum();
            best = Some(best.map_or(c, |b: f64| b.min(c)));
        }
        best
    }

    #[test]
    fn dp_finds_the_brute_force_optimum() {
        let mut rng = Rng::new(11);
        for _ in 0..40 {
            let steps = 2 + (rng.next_u64() % 10) as usize;
            // random edge costs, growing with the gap as measured errors do, with noise
            let m: Vec<Vec<f64>> = (0..steps)
                .map(|i| {
                    (0..steps)
                        .map(|j| {
                            if j > i {
                                (j - i - 1) as f64 * rng.uniform() as f64 * 3.0 + rng.uniform() as f64
                            } else {
                                f64::NAN
                            }
                        })
                        .collect()
                })
                .collect();
            let cost = |i: usize, j: usize| m[i][j];
            for full in 2..=steps {
                let (path, total) = best_path(steps, full, &cost).unwrap();
                let want = brute_force(steps, full, &cost).unwrap();
                assert!((total - want).abs() <= 1e-9 * want.abs().max(1.0), "{steps} steps, {full}: {total} vs {want}");
                assert_eq!(path.len(), full);
                assert_eq!((path[0], *path.last().unwrap()), (0, steps - 1));
                assert!(path.windows(2).all(|w| w[0] < w[1]));
                let c: f64 = path.windows(2).map(|w| cost(w[0], w[1])).sum();
                assert!((c - total).abs() <= 1e-9 * c.abs().max(1.0), "the path's own cost");
            }
            assert!(best_path(steps, 1, &cost).is_none() && best_path(steps, steps + 1, &cost).is_none());
        }
    }

    #[test]
    fn dp_on_a_hand_made_matrix() {
        // 5 steps, 3 full steps: 0 → 2 → 4 costs 1 + 1 = 2; every other path costs more.
        let c = [
            [0.0, 0.0, 1.0, 5.0, 9.0],
            [0.0, 0.0, 0.0, 4.0, 3.5],
            [0.0, 0.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ];
        let cost = |i: usize, j: usize| c[i][j];
        assert_eq!(best_path(5, 3, &cost), Some((vec![0, 2, 4], 2.0)));
        assert_eq!(best_path(5, 5, &cost), Some((vec![0, 1, 2, 3, 4], 0.0)));
        assert_eq!(best_path(5, 2, &cost), Some((vec![0, 4], 9.0)));
        assert_eq!(Schedule::bits(&Schedule::mask_of(&[0, 2, 4], 5)), "10101");
    }
}
