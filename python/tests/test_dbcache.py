"""DBCache against cache-dit itself (cache-dit 1.5.3, the PyPI package, on the CPU): on a tiny
random PixArt-Σ pipeline (DPM-Solver++, CFG in the batch) and a tiny SD3.5 one (MMDiT: image and
context streams, the last block context-pre-only; flow matching), `accelerate(pipe, cache="dbcache:...")`
makes the same cached-step decisions as `cache_dit.enable_cache(pipe, DBCacheConfig(...))` and
the final latents agree within 1e-5 (max |Δ| relative to max |latent|), for several (Fn, Bn,
warm-up, threshold, caps) settings, with and without its TaylorSeer calibrator (orders 1 and 2);
`first-block` makes cache-dit's F1B0 decisions. Skipped where cache_dit is not importable.

cache-dit's TaylorSeer states are created lazily at their first update (step 0), after that
step's counter advance, so their step counter runs one behind the step index in every call: the
first derivative comes at step 3, not 2. Ours counts the same way."""

import pytest
import torch

import deltadit.diffusers as dd
import tiny

cache_dit = pytest.importorskip("cache_dit", reason="cache_dit (pip install cache_dit==1.5.3) is not installed")

STEPS, GUIDANCE, LAYERS = 12, 4.5, 5
# cache-dit's predefined steps computation masks at this step count, as bits for our spec
MEDIUM = cache_dit.steps_mask(mask_policy="medium", total_steps=STEPS)
FAST = cache_dit.steps_mask(mask_policy="fast", total_steps=STEPS)
bits = lambda m: "".join(map(str, m))  # noqa: E731

# (our spec, cache-dit DBCacheConfig kwargs, TaylorSeer order or None)
CASES = [
    ("dbcache:fn=1,bn=0,threshold=0.5,warmup=2,calibrator=none", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2), None),
    ("dbcache:fn=2,bn=1,threshold=0.45,warmup=3,calibrator=none", dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.45, max_warmup_steps=3), None),
    ("dbcache:fn=1,bn=2,threshold=0.6,warmup=1,max-cached=4,max-continuous=2,calibrator=none", dict(Fn_compute_blocks=1, Bn_compute_blocks=2, residual_diff_threshold=0.6, max_warmup_steps=1, max_cached_steps=4, max_continuous_cached_steps=2), None),
    ("dbcache:fn=1,bn=0,threshold=1.0,warmup=2,max-continuous=3,calibrator=none", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1.0, max_warmup_steps=2, max_continuous_cached_steps=3), None),
    ("dbcache:fn=1,bn=0,threshold=0.5,warmup=2,calibrator=taylor1", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2), 1),
    ("dbcache:fn=2,bn=1,threshold=0.6,warmup=2,max-continuous=2,calibrator=taylor1", dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=0.6, max_warmup_steps=2, max_continuous_cached_steps=2), 1),
    ("dbcache:fn=1,bn=1,threshold=0.6,warmup=3,max-continuous=2,calibrator=taylor2", dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.6, max_warmup_steps=3, max_continuous_cached_steps=2), 2),
    ("dbcache:fn=1,bn=0,threshold=1.0,warmup=2,max-continuous=1,calibrator=taylor2", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1.0, max_warmup_steps=2, max_continuous_cached_steps=1), 2),
    # steps computation masks (dynamic policy); warm-up 4 is cut to the fast mask's 3 leading ones
    (f"dbcache:fn=1,bn=0,threshold=0.5,warmup=2,calibrator=none,steps-mask={bits(MEDIUM)}", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=2, steps_computation_mask=MEDIUM), None),
    (f"dbcache:fn=1,bn=0,threshold=0.6,warmup=4,calibrator=taylor1,steps-mask={bits(FAST)}", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.6, max_warmup_steps=4, steps_computation_mask=FAST), 1),
    ("first-block:threshold=0.5,max-cached=2,calibrator=none", dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.5, max_warmup_steps=0, max_continuous_cached_steps=2), None),
]


def cache_dit_run(cfg, order):
    pipe = tiny.pipeline("sigma", "dpm-solver++", layers=LAYERS)
    cal = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**cfg), calibrator_config=cal)
    lat, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=STEPS, guidance=GUIDANCE)
    st = cache_dit.summary(pipe, logging=False)[0]
    return lat, sorted(st.cached_steps), {int(k): v for k, v in st.residual_diffs.items()}


def ours_run(spec):
    pipe = tiny.pipeline("sigma", "dpm-solver++", layers=LAYERS)
    dd.accelerate(pipe, cache=spec)
    lat, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=STEPS, guidance=GUIDANCE)
    st = dd.stats(pipe)
    cached = [s["step"] for s in st if s["plan"].startswith("reuse")]
    return lat, cached, {s["step"]: s["probe"] for s in st}


@pytest.mark.parametrize("spec,cfg,order", CASES, ids=[c[0] for c in CASES])
def test_dbcache_equals_cache_dit(spec, cfg, order):
    ref, ref_cached, ref_diffs = cache_dit_run(cfg, order)
    lat, cached, probes = ours_run(spec)
    assert cached == ref_cached, f"cached steps {cached} != cache-dit's {ref_cached} (diffs {ref_diffs}, ours {probes})"
    assert 0 < len(cached) < STEPS - 1, f"the case should mix cached and full steps: {cached}"
    # the signal itself, on the steps cache-dit measured it
    for step, d in ref_diffs.items():
        if d >= 0 and probes.get(step) is not None:
            assert abs(probes[step] - d) <= 1e-5 * max(1.0, abs(d)), f"step {step}: probe {probes[step]} vs {d}"
    err = float((lat.double() - ref.double()).abs().max() / ref.double().abs().max())
    print(f"{spec}: cached {cached}, max|Δ|/max|ref| = {err:.2e}")
    assert err <= 1e-5, f"{spec}: final latents differ from cache-dit's by {err:.2e} (max relative)"


@pytest.mark.parametrize("order", [1, 2])
def test_taylor_forecast_is_not_reuse(order):
    """The calibrator changes the result: with the same decisions (threshold ≥ 1, a full step
    every other step), TaylorSeer's latents differ from plain reuse's by more than ten times the
    tolerance above, and both runs cache the same steps."""
    base = "dbcache:fn=1,bn=0,threshold=1.0,warmup=2,max-continuous=1"
    reuse, c0, _ = ours_run(f"{base},calibrator=none")
    fc, c1, _ = ours_run(f"{base},calibrator=taylor{order}")
    assert c0 == c1 == [2, 4, 6, 8, 10]
    diff = float((fc.double() - reuse.double()).abs().max() / reuse.double().abs().max())
    assert diff > 1e-4, f"taylor{order} vs reuse: {diff:.2e}"


# SD3.5: the decision reads the image stream's Fn residual only; the middle residual (and its
# forecast) moves both streams. (cache-dit itself fails on F1B0 with TaylorSeer here: the last
# block returns no context, so its encoder calibrator is never updated and `approximate` raises;
# Bn ≥ 1 avoids it.)
SD3_CASES = [
    ("dbcache:fn=1,bn=1,threshold=0.8,warmup=2,calibrator=none", dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=0.8, max_warmup_steps=2), None),
    ("dbcache:fn=1,bn=1,threshold=1.0,warmup=2,max-continuous=1,calibrator=taylor1", dict(Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=2, max_continuous_cached_steps=1), 1),
    ("dbcache:fn=2,bn=1,threshold=1.0,warmup=2,max-continuous=1,calibrator=taylor2", dict(Fn_compute_blocks=2, Bn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=2, max_continuous_cached_steps=1), 2),
]
SD3_RUN = dict(steps=STEPS, guidance=5.0, height=64, width=96)


@pytest.mark.parametrize("spec,cfg,order", SD3_CASES, ids=[c[0] for c in SD3_CASES])
def test_dbcache_equals_cache_dit_sd35(spec, cfg, order):
    pipe = tiny.pipeline("sd35", "flow-match-euler", layers=LAYERS)
    cal = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=order) if order else None
    cache_dit.enable_cache(pipe, cache_config=cache_dit.DBCacheConfig(**cfg), calibrator_config=cal)
    ref, _ = tiny.run(pipe, "sd35", "flow-match-euler", **SD3_RUN)
    ref_cached = sorted(cache_dit.summary(pipe, logging=False)[0].cached_steps)

    pipe = tiny.pipeline("sd35", "flow-match-euler", layers=LAYERS)
    dd.accelerate(pipe, cache=spec)
    lat, _ = tiny.run(pipe, "sd35", "flow-match-euler", **SD3_RUN)
    cached = [s["step"] for s in dd.stats(pipe) if s["plan"].startswith("reuse")]
    assert cached == ref_cached and 0 < len(cached) < STEPS - 1, f"cached steps {cached} vs cache-dit's {ref_cached}"
    err = float((lat.double() - ref.double()).abs().max() / ref.double().abs().max())
    print(f"sd35 {spec}: cached {cached}, max|Δ|/max|ref| = {err:.2e}")
    assert err <= 1e-5, f"sd35 {spec}: final latents differ from cache-dit's by {err:.2e} (max relative)"
