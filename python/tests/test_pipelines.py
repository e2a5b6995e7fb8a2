"""deltadit.diffusers.accelerate(pipe) against the unpatched pipeline, same generator: final
latents and decoded images within 1e-4 relative (f32, CPU) for PixArt-α (micro-conditions),
PixArt-Σ and DiT, with DPM-Solver++, DDIM and LCM, at a non-square size and with padded prompts;
and the module the pipeline sees (config, dtype, device, .to, return types)."""

import pytest
import torch

import deltadit
import deltadit.diffusers as dd
import tiny
from tiny import rel

# (scheduler, steps, guidance): CFG with the multistep and DDIM solvers, LCM without (batch 1)
SCHEDULES = [("dpm-solver++", 20, 4.5), ("ddim", 10, 4.0), ("lcm", 4, 0.0)]


def size(kind):
    # PixArt: a non-square image (16×24 pixels, 8×12 latents); DiTPipeline is square (sample_size)
    return dict(height=8) if kind == "dit" else dict(height=16, width=24)


@pytest.mark.parametrize("sched,steps,guidance", SCHEDULES, ids=[s[0] for s in SCHEDULES])
@pytest.mark.parametrize("kind", ["alpha", "sigma", "dit"])
def test_accelerated_equals_native(kind, sched, steps, guidance):
    pipe = tiny.pipeline(kind, sched, layers=3)
    n = 2  # two prompts (padded differently) / two class labels
    kw = dict(steps=steps, guidance=guidance, n=n, **size(kind))
    lat0, img0 = tiny.run(pipe, kind, sched, **kw)
    assert dd.accelerate(pipe) is pipe
    lat1, img1 = tiny.run(pipe, kind, sched, **kw)
    assert lat1.shape == lat0.shape and img1.shape == img0.shape
    assert rel(lat1, lat0) <= 1e-4, f"latents {rel(lat1, lat0):.3e}"
    assert rel(img1, img0) <= 1e-4, f"images {rel(img1, img0):.3e}"
    st = dd.stats(pipe)
    assert [s["step"] for s in st] == list(range(steps))
    assert all(s["plan"] == "full" and s["blocks_run"] == 3 for s in st)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    assert [s["timestep"] for s in st] == ts


def test_micro_conditions_reach_the_model():
    """PixArt-α's resolution / aspect-ratio micro-conditions change the result (so they are
    passed on, not dropped): two sizes with the same latent noise differ from each other."""
    pipe = tiny.pipeline("alpha", "ddim", layers=2)
    dd.accelerate(pipe)
    assert pipe.transformer.use_additional_conditions  # copied from the original module
    a, _ = tiny.run(pipe, "alpha", "ddim", steps=2, guidance=4.0, height=16, width=24)
    mod = pipe.transformer.deltadit
    cond, cmask, _, _ = tiny.prompts(1)
    x = torch.randn(1, 4, 8, 12)
    t = torch.tensor([500.0])
    base = dict(encoder_hidden_states=cond, encoder_attention_mask=cmask, timestep=t)
    o1 = mod(x, **base, added_cond_kwargs={"resolution": torch.tensor([[16.0, 24.0]]), "aspect_ratio": torch.tensor([[2 / 3]])})
    o2 = mod(x, **base, added_cond_kwargs={"resolution": torch.tensor([[64.0, 96.0]]), "aspect_ratio": torch.tensor([[2 / 3]])})
    assert rel(o1.sample, o2.sample) > 1e-3
    assert torch.isfinite(a).all()


def test_module_looks_like_the_original():
    import diffusers

    pipe = tiny.pipeline("alpha", "dpm-solver++", layers=2)
    orig = pipe.transformer
    cfg_before = dict(pipe.config)
    dd.accelerate(pipe)
    m = pipe.transformer
    assert m is not orig and dd.is_accelerated(pipe)
    assert isinstance(m, diffusers.PixArtTransformer2DModel) and isinstance(m, torch.nn.Module)
    assert type(m).__name__ == "PixArtTransformer2DModel"
    assert m.config is orig.config  # the very same FrozenDict
    assert m.config.in_channels == 4 and m.config.sample_size == 128
    assert m.dtype == torch.float32 and m.device == torch.device("cpu")
    assert dict(pipe.config) == cfg_before  # the pipeline's own config is untouched
    assert isinstance(pipe, diffusers.PixArtAlphaPipeline) and type(pipe).__name__ == "PixArtAlphaPipeline"
    assert pipe.components["transformer"] is m
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert list(m.parameters()) == []
    assert "deltadit: device=cpu" in repr(m)
    # .to: the pipeline's own calls work and return the module; dtype and device are recorded
    assert m.to("cpu") is m and m.to(torch.float32) is m
    assert pipe.to("cpu") is pipe
    m.to(dtype=torch.float16)
    assert m.dtype == torch.float16
    m.float()
    assert m.dtype == torch.float32
    with pytest.raises(TypeError):
        m.to(torch.int64)
    # return types: the pipeline indexes [0] with return_dict=False, and .sample otherwise
    cond, cmask, _, _ = tiny.prompts(1)
    x = torch.randn(1, 4, 8, 12)
    t = torch.tensor([999])
    added = {"resolution": torch.tensor([[16.0, 24.0]]), "aspect_ratio": torch.tensor([[2 / 3]])}
    out = m(x, encoder_hidden_states=cond, timestep=t, added_cond_kwargs=added, encoder_attention_mask=cmask)
    assert type(out).__name__ == "Transformer2DModelOutput" and out.sample.shape == (1, 8, 8, 12)
    tup = m(x, cond, t, added, None, None, cmask, False)
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.sample)
    m.half()
    half = m(x, encoder_hidden_states=cond, timestep=t, added_cond_kwargs=added, encoder_attention_mask=cmask).sample
    assert half.dtype == torch.float16  # outputs in the dtype the module reports


def test_two_calls_in_a_row_equal():
    pipe = tiny.pipeline("sigma", "dpm-solver++", layers=3)
    dd.accelerate(pipe, cache="delta")
    a, ia = tiny.run(pipe, "sigma", "dpm-solver++", steps=20, guidance=4.5, **size("sigma"))
    sa = dd.stats(pipe)
    b, ib = tiny.run(pipe, "sigma", "dpm-solver++", steps=20, guidance=4.5, **size("sigma"))
    sb = dd.stats(pipe)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert [s["plan"] for s in sa] == [s["plan"] for s in sb]
    assert len(sb) == 20  # per call, not accumulated


def test_changing_the_step_count_between_calls():
    """The policy is bound to a run's step count: a call with another count gets its own."""
    pipe = tiny.pipeline("dit", "ddim", layers=3)
    dd.accelerate(pipe, cache="delta")
    tiny.run(pipe, "dit", "ddim", steps=10, guidance=4.0, height=8)
    s10 = dd.stats(pipe)
    tiny.run(pipe, "dit", "ddim", steps=4, guidance=4.0, height=8)
    s4 = dd.stats(pipe)
    assert len(s10) == 10 and len(s4) == 4
    assert s4[0]["plan"].startswith("full")


def test_reaccelerate_changes_the_cache_only():
    pipe = tiny.pipeline("dit", "ddim", layers=3)
    dd.accelerate(pipe, cache="none")
    cls = type(pipe)
    dd.accelerate(pipe, cache="fora:n=2,calibrator=none")
    assert type(pipe) is cls
    tiny.run(pipe, "dit", "ddim", steps=4, guidance=4.0, height=8)
    assert [s["plan"] for s in dd.stats(pipe)] == ["full+branches", "reuse-branches"] * 2
    with pytest.raises(deltadit.UnsupportedError):
        dd.accelerate(pipe, device="sim")


def test_own_loop_outside_a_pipeline_call():
    """The accelerated module in a caller's own loop over pipe.scheduler.timesteps: each pass over
    the timesteps is a run (step index from the timestep)."""
    pipe = tiny.pipeline("dit", "ddim", layers=3)
    dd.accelerate(pipe, cache="delta:n=2,nc=1,b=2")
    sch = pipe.scheduler
    sch.set_timesteps(4)
    m = pipe.transformer
    labels = torch.tensor([3])
    for _ in range(2):
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in sch.timesteps:
            eps = m(x, timestep=t, class_labels=labels).sample[:, :4]
            x = sch.step(eps, t, x).prev_sample
        plans = [s["plan"] for s in dd.stats(pipe)]
        assert plans == ["full+rear", "cached-rear-1", "full+front", "cached-front-1"], plans
