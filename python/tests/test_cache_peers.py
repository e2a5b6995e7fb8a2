"""bench/cache_peers.py in its smallest mode (--quick: pixart-digits, sd3-digits and flux-digits,
2 images, one setting per family): the summary table's structure, the uncached row against itself,
and its quality measures against independent references (scikit-image's SSIM definition, written
out here with scipy's uniform filter; PSNR from the mean squared error); flux-digits' unpacked
images against train/train_flux.py's loop; sd3-digits' cache-dit configuration for Bn = 0."""

import importlib.util
import json
import math

import numpy as np
import pytest

import tiny

pytest.importorskip("diffusers")


def load_harness():
    path = tiny.REPO / "bench" / "cache_peers.py"
    spec = importlib.util.spec_from_file_location("cache_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ref_ssim(a, b):
    """SSIM as scikit-image computes it by default (7×7 uniform window, sample covariance,
    mean over the valid region), for one-channel images in [0, 1]."""
    from scipy.ndimage import uniform_filter

    win, n = 7, 49
    cov = n / (n - 1)
    f = lambda x: uniform_filter(x, size=win, mode="reflect")  # noqa: E731
    ma, mb = f(a), f(b)
    va = cov * (f(a * a) - ma * ma)
    vb = cov * (f(b * b) - mb * mb)
    vab = cov * (f(a * b) - ma * mb)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def test_quality_measures_match_references():
    cp = load_harness()
    rng = np.random.default_rng(3)
    a = rng.uniform(-1.2, 1.2, (1, 16, 16))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1.5, 1.5)
    ua, ub = (np.clip(a, -1, 1) + 1) / 2, (np.clip(b, -1, 1) + 1) / 2
    assert cp.psnr(a, b) == pytest.approx(-10 * math.log10(np.mean((ua - ub) ** 2)), rel=1e-12)
    assert cp.psnr(a, a) == 100.0
    assert cp.ssim(a, b) == pytest.approx(ref_ssim(ua[0], ub[0]), rel=1e-9)
    assert cp.ssim(a, a) == pytest.approx(1.0)


# pixart-digits (the default), and the MMDiT pipelines: sd3-digits (StableDiffusion3Pipeline, whose
# last block is context_pre_only) and flux-digits (FluxPipeline, packed latents, double and single
# blocks); dit-digits runs the same code path as pixart-digits (a non-joint pipeline)
@pytest.mark.parametrize("model", ["pixart-digits", "sd3-digits", "flux-digits"])
def test_quick_run_table(tmp_path, model):
    pytest.importorskip("cache_dit", reason="cache_dit is not installed (pip install cache_dit==1.5.3)")
    cp = load_harness()
    out = cp.main(["--quick", "--model", model, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["images"] == 2 and saved["meta"]["model"] == model
    assert saved["meta"]["skipped"] == [], saved["meta"]["skipped"]
    assert (tmp_path / "results.md").read_text().count("| budget | fewer-steps | cache-dit | deltadit |") == 2
    rows = out["rows"]
    for r in rows:  # the images are [c, 16, 16] (FLUX's packed tokens unpacked)
        assert r["ssim_mean"] <= 1.0 + 1e-12
    fams = {r["family"] for r in rows}
    assert fams == {"uncached", "fewer-steps", "cache-dit", "deltadit"}, fams
    for r in rows:
        for k in ("compute", "psnr_mean", "psnr_worst", "ssim_mean", "ssim_worst"):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)
        assert r["psnr_worst"] <= r["psnr_mean"] + 1e-9 and r["ssim_worst"] <= r["ssim_mean"] + 1e-12
        assert r["mode"] in ("batch1", "batchN")
    for mode in ("batch1", "batchN"):
        un = [r for r in rows if r["family"] == "uncached" and r["mode"] == mode]
        assert len(un) == 1 and un[0]["compute"] == 1.0 and un[0]["psnr_mean"] >= 100.0, un
        assert un[0]["ssim_worst"] == pytest.approx(1.0)
        # fewer steps: compute k / steps exactly; cached runs skip blocks
        for r in rows:
            if r["family"] == "fewer-steps" and r["mode"] == mode:
                assert r["compute"] == pytest.approx(r["steps"] / 20)
                assert r["psnr_mean"] < 100
        assert any(r["family"] == "cache-dit" and r["mode"] == mode and r["compute"] < 1.0 for r in rows)
        assert any(r["family"] == "deltadit" and r["mode"] == mode and r["compute"] < 1.0 for r in rows)
    # the summary: both modes × the budgets 0.35 … 0.80, each family's best within the budget
    assert [(e["mode"], e["budget"]) for e in out["budgets"]] == [
        (m, b) for m in ("batch1", "batchN") for b in cp.BUDGETS
    ]
    assert cp.BUDGETS[0] == 0.35 and cp.BUDGETS[-1] == 0.8 and len(cp.BUDGETS) == 10
    for e in out["budgets"]:
        assert set(e["families"]) == set(cp.FAMILIES)
        for fam, best in e["families"].items():
            cand = [r for r in rows if r["family"] == fam and r["mode"] == e["mode"] and r["compute"] <= e["budget"] + 1e-9]
            if not cand:
                assert best is None
                continue
            assert best["compute"] <= e["budget"] + 1e-9
            assert best["psnr_mean"] == max(r["psnr_mean"] for r in cand)
            assert best["best_worst_psnr"] == max(r["psnr_worst"] for r in cand)


def test_flux_images_unpacked():
    """flux-digits: the harness's images are the pipeline's packed latents unpacked to [1, 16, 16]
    (FluxPipeline._unpack_latents), equal to the written-out loop of train/train_flux.py."""
    import sys

    import torch

    cp = load_harness()
    torch.set_num_threads(1)
    m = cp.Model("flux-digits", 4)
    imgs = m.sample(m.pipeline(), [0, 3], 4, seed=0)
    assert imgs.shape == (2, 1, 16, 16)
    sys.path.insert(0, str(tiny.REPO / "train"))
    import train_flux

    lat = torch.cat([m.noise(i, 0) for i in (0, 3)])
    cap = m.captions
    ref = train_flux.sample_flux(m.base, m.scheduler(), cap["embeds"][[0, 3]], cap["pooled"][[0, 3]],
                                 train_flux.pack(lat), steps=4, guidance=3.5)
    np.testing.assert_allclose(imgs, train_flux.unpack(ref).numpy(), rtol=0, atol=1e-5)


def test_sd3_cachedit_bn0_taylorseer():
    """sd3-digits, cache-dit F1B0 with TaylorSeer: without the encoder calibrator (what the harness
    runs, SD3_ENCODER_CALIBRATOR_NOTE) the images equal cache-dit's default configuration with the
    encoder calibrator's missing state read as no buffer (cache_dit 1.5.3 asserts there instead)."""
    pytest.importorskip("cache_dit", reason="cache_dit is not installed (pip install cache_dit==1.5.3)")
    import torch
    from cache_dit.caching.cache_contexts.calibrators import taylorseer as ts

    cp = load_harness()
    torch.set_num_threads(1)
    m = cp.Model("sd3-digits", 20)
    s = dict(fn=1, bn=0, threshold=0.16, warmup=2, taylor=True, mask=None)
    assert not cp.cachedit_encoder_calibrator("sd3", s)
    assert cp.cachedit_encoder_calibrator("sd3", dict(s, bn=1)) and cp.cachedit_encoder_calibrator("flux", s)
    p = m.pipeline()
    cp.enable_cachedit(p, s, 20, "sd3")
    ours = m.sample(p, [0, 1], 20, 0)

    orig = ts.TaylorSeerCalibrator.approximate
    def approximate(self, *args, name=None, **kw):  # noqa: E306
        return None if name not in self.states else orig(self, *args, name=name, **kw)

    p = m.pipeline()
    cp.enable_cachedit(p, s, 20, "")  # cache-dit's default: the encoder calibrator on
    try:
        ts.TaylorSeerCalibrator.approximate = approximate
        theirs = m.sample(p, [0, 1], 20, 0)
    finally:
        ts.TaylorSeerCalibrator.approximate = orig
    assert np.array_equal(ours, theirs)
