"""FLUX.1 (FluxTransformer2DModel): Transformer.from_diffusers against the module's own forward
(packed [B, N, C] latents, img_ids/txt_ids, dev's embedded guidance, σ timesteps the model
multiplies by 1000), and deltadit.diffusers.accelerate on FluxPipeline against the unpatched
pipeline (1e-4, f32 CPU) for tiny random dev and schnell models, with and without true CFG
(separate cache states per `cache_context` name)."""

import pytest
import torch

import deltadit
import deltadit.diffusers as dd
import tiny
from tiny import rel

JOINT, POOLED, TOKENS = tiny.FLUX_JOINT, tiny.FLUX_POOLED, tiny.FLUX_TOKENS
flux, pipeline, run = tiny.flux, tiny.flux_pipeline, tiny.flux_run


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_forward_matches_module(dev):
    mod = flux(dev)
    m = deltadit.Transformer.from_diffusers(mod)
    assert m.family == "flux" and m.class_name == "FluxTransformer2DModel"
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 16, 4, generator=g)
    ehs = torch.randn(2, TOKENS, JOINT, generator=g)
    pooled = torch.randn(2, POOLED, generator=g)
    from diffusers import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(1, 4, 4, torch.device("cpu"), torch.float32)
    txt_ids = torch.zeros(TOKENS, 3)
    kw = dict(
        encoder_hidden_states=ehs, pooled_projections=pooled, timestep=torch.tensor([1.0, 0.4215]),
        img_ids=img_ids, txt_ids=txt_ids, guidance=torch.tensor([3.5, 3.5]) if dev else None,
    )
    with torch.no_grad():
        ref = mod(x, **kw).sample
    out = m(x, **kw)
    assert out.sample.shape == ref.shape
    assert rel(out.sample, ref) <= 1e-5, f"{rel(out.sample, ref):.3e}"
    # positional, in diffusers' order
    (pos,) = m(x, ehs, pooled, kw["timestep"], img_ids, txt_ids, kw["guidance"], None, None, None, False)
    assert torch.equal(pos, out.sample)
    with pytest.raises(deltadit.UnsupportedError):
        m(x, **kw, joint_attention_kwargs={"scale": 0.5})
    with pytest.raises(deltadit.UnsupportedError):
        m(x, **kw, controlnet_block_samples=[x])
    with pytest.raises(deltadit.InputError):
        m(x, **{**kw, "img_ids": None})
    with pytest.raises(deltadit.InputError):
        m(x.reshape(2, 4, 4, 4), **kw)
    with pytest.raises(deltadit.InputError):  # dev needs the guidance; schnell has no embedding for it
        m(x, **{**kw, "guidance": None if dev else torch.tensor([3.5])})


@pytest.mark.parametrize("cfg", [False, True], ids=["nocfg", "truecfg"])
@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
@pytest.mark.parametrize("cache", ["none", "fora:n=2"])
def test_pipeline_matches_native(dev, cfg, cache):
    steps = 4
    ref = run(pipeline(dev), steps, cfg)
    pipe = dd.accelerate(pipeline(dev), device="cpu", cache=cache)
    assert dd.is_accelerated(pipe)
    out = run(pipe, steps, cfg)
    s = dd.stats(pipe)
    assert len(s) == steps * (2 if cfg else 1)
    assert [r["step"] for r in s] == [i for i in range(steps) for _ in range(2 if cfg else 1)]
    if cache == "none":
        err = rel(out, ref)
        print(f"flux dev={dev} cfg={cfg}: rel err {err:.3e}")
        assert err <= 1e-4, f"{err:.3e}"
    else:
        # each cache_context keeps its own state: the cond and uncond branches see the same plans
        plans = [r["plan"] for r in s]
        if cfg:
            assert plans[0::2] == plans[1::2]
        assert torch.isfinite(out).all()


class _PerContext(torch.nn.Module):
    """The reference for the accelerated module's cache contexts: FluxPipeline's transformer as
    one independent deltadit.Transformer per cache_context name, stepped by its own counter."""

    def __init__(self, orig, cache, steps):
        super().__init__()
        self.orig, self.cache, self.steps = orig, cache, steps
        self.models, self.counts, self.name = {}, {}, None
        self.config = orig.config

    dtype = torch.float32
    device = torch.device("cpu")

    def cache_context(self, name):
        import contextlib

        @contextlib.contextmanager
        def ctx():
            self.name = name
            yield
            self.name = None

        return ctx()

    def forward(self, **kw):
        m = self.models.get(self.name)
        if m is None:
            m = self.models[self.name] = deltadit.Transformer.from_diffusers(self.orig, cache=self.cache)
        i = self.counts.get(self.name, 0)
        self.counts[self.name] = i + 1
        return m(**kw, step=i, num_steps=self.steps)


@pytest.mark.parametrize("host_t", [True, False], ids=["host-timestep", "device-timestep"])
@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_cache_contexts_are_separate_runs(dev, host_t, monkeypatch):
    """Cached, with true CFG: the accelerated pipeline equals one independent cached run per
    cache_context name (cond, uncond). Without a host-readable timestep (a CUDA tensor: the step
    comes from the scheduler's step / begin index) too."""
    if not host_t:
        monkeypatch.setattr(dd, "_host_scalar", lambda t: None)
    steps, cache = 4, "fora:n=2"
    pipe = pipeline(dev)
    orig = pipe.transformer
    out = run(dd.accelerate(pipe, device="cpu", cache=cache), steps, True)
    plans = [r["plan"] for r in dd.stats(pipe)]
    assert [r["step"] for r in dd.stats(pipe)] == [i for i in range(steps) for _ in range(2)]
    assert plans[0::2] == plans[1::2] and any(p != plans[0] for p in plans), plans
    ref_pipe = pipeline(dev, transformer=orig)
    ref_pipe.__dict__["transformer"] = _PerContext(orig, cache, steps)
    ref = run(ref_pipe, steps, True)
    assert set(ref_pipe.transformer.models) == {"cond", "uncond"}
    err = rel(out, ref)
    assert err <= 1e-6, f"{err:.3e}"


@pytest.mark.parametrize("cache", ["none", "delta", "fora:n=2"])
def test_pipeline_matches_cli(cli, tmp_path, cache):
    """FluxPipeline (FLUX.1-dev, embedded guidance 3.5, no true CFG) accelerated with a cache
    policy equals `deltadit sample` on the same inputs with the same policy: the step index the
    accelerated module derives from the pipeline's σ timesteps is the CLI's."""
    from safetensors.torch import load_file, save_file

    steps = 6
    mod = flux(True)
    mod.save_pretrained(str(tmp_path / "model"))
    pipe = dd.accelerate(pipeline(True, transformer=mod), device="cpu", cache=cache)
    out = run(pipe, steps, False)
    e, p = tiny.flux_embeds(1)
    g = torch.Generator().manual_seed(7)
    lat = torch.randn(1, (tiny.FLUX_SIZE // 2) ** 2, 4, generator=g)
    save_file({"latents": lat, "cond_embeds": e.contiguous(), "cond_pooled": p.contiguous()}, str(tmp_path / "in.st"))
    pipe.scheduler.save_config(str(tmp_path / "sched"))
    cmd = [
        str(cli), "sample", "--model", str(tmp_path / "model"), "--inputs", str(tmp_path / "in.st"),
        "--output", str(tmp_path / "out.st"), "--scheduler", "flow-match-euler", "--steps", str(steps),
        "--guidance", "3.5", "--cache", cache,
        "--scheduler-config", str(tmp_path / "sched" / "scheduler_config.json"),
    ]
    import subprocess

    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = load_file(str(tmp_path / "out.st"))
    st = dd.stats(pipe)
    assert [s["blocks_run"] for s in st] == ref["blocks_run"].tolist()
    if cache != "none":
        assert sum(s["blocks_run"] for s in st) < steps * pipe.transformer.deltadit.num_blocks
    err = rel(out, ref["latents"])
    print(f"flux {cache} vs CLI: rel err {err:.3e}, blocks {[s['blocks_run'] for s in st]}")
    assert err <= 1e-4, f"{err:.3e}"
