"""Cache policies through an accelerated pipeline: the blocks run at each step and the final
latents equal those of the CLI's `deltadit sample` on the same inputs (the same weights, noise,
prompts or labels, scheduler, guidance and policy), and two calls in a row give the same result;
PixArt, DiT, and SD3 / SD3.5 with the flow-matching Euler scheduler."""

import pytest
import torch

import deltadit.diffusers as dd
import tiny
from tiny import rel

LAYERS = 6
CASES = [
    # kind, scheduler, steps, guidance, cache, whether blocks are skipped
    ("alpha", "dpm-solver++", 20, 4.5, "delta", True),
    ("alpha", "dpm-solver++", 20, 4.5, "delta:n=3,nc=2,b=8", True),
    ("sigma", "ddim", 10, 4.0, "delta:n=2,nc=2,b=5", True),
    ("alpha", "lcm", 4, 0.0, "delta", True),
    ("dit", "ddim", 10, 4.0, "delta", True),
    ("dit", "dpm-solver++", 20, 4.0, "fora:n=3", True),
    ("alpha", "dpm-solver++", 20, 4.5, "fora:n=2", True),
    # probe-driven policies, with thresholds far from the probes' values on random weights
    # (0.25–1.3 a step), so that the decisions cannot flip on a rounding difference
    ("alpha", "dpm-solver++", 20, 4.5, "delta-adaptive:threshold=1000,warmup=2,max-cached=2", True),
    ("sigma", "dpm-solver++", 20, 4.5, "delta-adaptive:threshold=0.000001", False),
    ("alpha", "dpm-solver++", 20, 4.5, "first-block:threshold=1000,max-cached=3", True),
    ("dit", "ddim", 10, 4.0, "first-block:threshold=0.000001", False),
    # SD3 (no qk norm) and SD3.5 (RMS qk norm, dual attention in block 0): StableDiffusion3Pipeline
    # with FlowMatchEulerDiscreteScheduler (shift 3), CFG
    ("sd3", "flow-match-euler", 12, 5.0, "delta", True),
    ("sd35", "flow-match-euler", 12, 5.0, "delta", True),
    ("sd35", "flow-match-euler", 12, 5.0, "delta:n=3,nc=2,b=8", True),
    ("sd3", "flow-match-euler", 12, 5.0, "fora:n=2", True),
    ("sd35", "flow-match-euler", 12, 5.0, "fora:n=2", True),
    ("sd3", "flow-match-euler", 12, 5.0, "first-block:threshold=1000,max-cached=3", True),
    ("sd35", "flow-match-euler", 12, 5.0, "first-block:threshold=0.000001", False),
    ("sd35", "flow-match-euler", 12, 5.0, "delta-adaptive:threshold=1000,warmup=2,max-cached=2", True),
    ("sd3", "flow-match-euler", 12, 5.0, "delta-adaptive:threshold=0.000001", False),
    ("alpha", "dpm-solver++", 20, 4.5, "dbcache:fn=1,bn=1,threshold=1000,warmup=2,max-continuous=2,calibrator=taylor2", True),
    ("sd35", "flow-match-euler", 12, 5.0, "dbcache:fn=1,bn=1,threshold=1000,warmup=2,max-continuous=2,calibrator=taylor1", True),
    ("alpha", "dpm-solver++", 20, 4.5, "delta:n=2,nc=2,b=10,calibrator=taylor1", True),
    ("sd3", "flow-match-euler", 12, 5.0, "fora:n=3,calibrator=taylor2", True),
    ("alpha", "dpm-solver++", 20, 4.5, "dbcache:fn=1,bn=1,threshold=1000,warmup=2,calibrator=taylor1,verify=0.05", True),
    # a per-step compute mask (searched schedules): cached steps run no block
    ("alpha", "dpm-solver++", 20, 4.5, "schedule:mask=11011010110101101011", True),
    ("dit", "ddim", 10, 4.0, "schedule:mask=1101001011", True),
    ("sd35", "flow-match-euler", 12, 5.0, "schedule:mask=101101011011", True),
]


def sample_size(kind):
    if kind == "dit":
        return dict(height=8)
    if kind in tiny.SD3_KINDS:
        return dict(height=64, width=96)  # the VAE-less pipeline: 8×12 latents
    return dict(height=16, width=24)


@pytest.mark.parametrize("kind,sched,steps,guidance,cache,skips", CASES, ids=[f"{c[0]}-{c[1]}-{c[4]}" for c in CASES])
def test_cache_matches_cli(cli, tmp_path, kind, sched, steps, guidance, cache, skips):
    pipe = tiny.pipeline(kind, sched, layers=LAYERS)
    model_dir = tmp_path / "transformer"
    pipe.transformer.save_pretrained(str(model_dir))
    size = sample_size(kind)
    dd.accelerate(pipe, cache=cache)
    lat, img = tiny.run(pipe, kind, sched, steps=steps, guidance=guidance, **size)
    st = dd.stats(pipe)
    blocks = [s["blocks_run"] for s in st]

    out = tiny.cli_sample(
        model_dir,
        tiny.cli_inputs(kind, sched, steps=steps, **size),
        tmp_path,
        sched=sched,
        steps=steps,
        guidance=guidance,
        cache=cache,
    )
    assert [float(t) for t in out["timesteps"]] == [s["timestep"] for s in st]
    assert blocks == out["blocks_run"].tolist(), f"blocks run per step: pipeline {blocks}, CLI {out['blocks_run'].tolist()}"
    e = rel(lat, out["latents"])
    assert e <= 1e-4, f"final latents vs the CLI: {e:.3e}"
    assert (sum(blocks) < steps * LAYERS) == skips, blocks

    lat2, img2 = tiny.run(pipe, kind, sched, steps=steps, guidance=guidance, **size)
    assert torch.equal(lat, lat2) and torch.equal(img, img2)
    assert [s["blocks_run"] for s in dd.stats(pipe)] == blocks
