"""SD3 / SD3.5 (SD3Transformer2DModel): Transformer.from_diffusers against the module's own forward
(1e-5), deltadit.diffusers.accelerate on StableDiffusion3Pipeline against the unpatched pipeline
(1e-4, f32 CPU, FlowMatchEulerDiscreteScheduler) for SD3 (no qk norm) and SD3.5 (RMS qk norm, dual
attention in block 0), skip-layer guidance, the arguments that are rejected, and the class table
against the installed diffusers."""

import inspect

import pytest
import torch

import deltadit
import deltadit.diffusers as dd
import tiny
from deltadit._classes import MODEL_CLASSES
from tiny import rel

KINDS = ["sd3", "sd35"]
SIZE = dict(height=64, width=96)  # pixels of the VAE-less pipeline: 8×12 latents, 4×6 patches


def test_class_table_matches_diffusers():
    """The table's forward signatures are diffusers' own (names, order, defaults), and so are
    those of the accelerated modules."""
    import diffusers

    for row in MODEL_CLASSES:
        cls = getattr(diffusers, row.name)
        theirs = list(inspect.signature(cls.forward).parameters.values())[1:]
        ours = list(row.forward.parameters.values())
        assert [(p.name, p.default, p.kind) for p in ours] == [(p.name, p.default, p.kind) for p in theirs], row.name
        acc = dd._module_class(cls)
        assert list(inspect.signature(acc.forward).parameters) == ["self", *row.forward.parameters]
        assert acc.__name__ == row.name and issubclass(acc, cls)


def sd3_inputs(b=2, h=8, w=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, h, w, generator=g)
    ehs = torch.randn(b, tiny.SD3_TOKENS, tiny.SD3_JOINT, generator=g)
    pooled = torch.randn(b, tiny.SD3_POOLED, generator=g)
    t = torch.tensor([1000.0, 421.5][:b])
    return x, dict(encoder_hidden_states=ehs, pooled_projections=pooled, timestep=t)


@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_module(kind):
    mod = tiny.sd3(sd35=kind == "sd35", layers=3)
    m = deltadit.Transformer.from_diffusers(mod)
    assert m.family == "sd3" and m.class_name == "SD3Transformer2DModel" and m.num_blocks == 3
    assert m.weights.startswith("torch SD3Transformer2DModel (float32 on cpu)")
    x, kw = sd3_inputs()
    with torch.no_grad():
        ref = mod(x, **kw).sample
        ref_skip = mod(x, **kw, skip_layers=[1]).sample
    out = m(x, **kw)
    assert type(out).__name__ == "Transformer2DModelOutput"
    assert rel(out.sample, ref) <= 1e-5, f"{rel(out.sample, ref):.3e}"
    # positional, in diffusers' order: hidden_states, encoder_hidden_states, pooled_projections, timestep
    (pos,) = m(x, kw["encoder_hidden_states"], kw["pooled_projections"], kw["timestep"], None, None, False)
    assert torch.equal(pos, out.sample)
    # skip_layers: the forward without block 1 (its own session; the plain one is kept)
    plain = m._session
    skip = m(x, **kw, skip_layers=[1]).sample
    assert rel(skip, ref_skip) <= 1e-5 and rel(skip, ref) > 1e-3
    m(x, **kw)
    assert m._session is plain


def test_rejected_arguments_and_processors():
    mod = tiny.sd3(layers=2)
    m = deltadit.Transformer.from_diffusers(mod)
    x, kw = sd3_inputs()
    with pytest.raises(deltadit.UnsupportedError, match="block_controlnet_hidden_states") as e:
        m(x, **kw, block_controlnet_hidden_states=[torch.zeros(2, 24, 64)])
    assert e.value.kind == "unsupported_argument"
    with pytest.raises(deltadit.UnsupportedError, match="joint_attention_kwargs"):
        m(x, **kw, joint_attention_kwargs={"scale": 0.5})
    m(x, **kw, joint_attention_kwargs={}, block_controlnet_hidden_states=None)  # empty / None: fine
    with pytest.raises(deltadit.InputError, match="pooled_projections"):
        m(x, encoder_hidden_states=kw["encoder_hidden_states"], timestep=kw["timestep"])
    with pytest.raises(deltadit.InputError, match="pooled_projections"):
        m(x, **dict(kw, pooled_projections=torch.zeros(2, 7)))
    with pytest.raises(deltadit.ParameterError, match="skip_layers"):
        m(x, **kw, skip_layers=[5])
    with pytest.raises(TypeError, match="SD3Transformer2DModel.forward"):
        m(x, **kw, class_labels=torch.tensor([1, 2]))
    fused = tiny.sd3(layers=2)
    fused.fuse_qkv_projections()
    with pytest.raises(deltadit.UnsupportedError, match="FusedJointAttnProcessor2_0"):
        deltadit.Transformer.from_diffusers(fused)


@pytest.mark.parametrize("kind", KINDS)
def test_accelerated_equals_native(kind):
    pipe = tiny.pipeline(kind, "flow-match-euler", layers=3)
    kw = dict(steps=8, guidance=5.0, n=2, **SIZE)
    lat0, _ = tiny.run(pipe, kind, "flow-match-euler", **kw)
    assert dd.accelerate(pipe) is pipe
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and type(pipe.transformer).__name__ == "SD3Transformer2DModel"
    lat1, _ = tiny.run(pipe, kind, "flow-match-euler", **kw)
    assert lat1.shape == lat0.shape == (2, 4, 8, 12)
    e = rel(lat1, lat0)
    print(f"{kind}: accelerated vs native, final latents rel L2 {e:.3e}")
    assert e <= 1e-4, f"latents {e:.3e}"
    st = dd.stats(pipe)
    assert [s["step"] for s in st] == list(range(8))
    assert all(s["plan"] == "full" and s["blocks_run"] == 3 for s in st)
    assert [s["timestep"] for s in st] == [float(t) for t in pipe.scheduler.timesteps]


def slg_call(pipe, n=1, steps=10):
    cond, pooled, uncond, upooled = tiny.sd3_prompts(n)
    return pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=upooled,
        guidance_scale=5.0,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        skip_guidance_layers=[1],
        skip_layer_guidance_start=0.0,
        skip_layer_guidance_stop=0.35,
        **SIZE,
    ).images


def test_skip_layer_guidance():
    """StableDiffusion3Pipeline's skip-layer guidance: a second forward at some steps, on the
    conditional half with `skip_layers`; equal to the native pipeline, and with a cache policy the
    guidance pass runs uncached beside the cached run."""
    pipe = tiny.pipeline("sd35", "flow-match-euler", layers=4)
    ref = slg_call(pipe)
    dd.accelerate(pipe)
    out = slg_call(pipe)
    assert rel(out, ref) <= 1e-4, f"{rel(out, ref):.3e}"
    st = dd.stats(pipe)
    # steps 1..3 call the transformer twice (i > 0 and i < 3.5)
    steps = [0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9]
    assert [s["step"] for s in st] == steps
    assert all(s["plan"] == "full" for s in st)
    dd.accelerate(pipe, cache="delta")
    cached = slg_call(pipe)
    st = dd.stats(pipe)
    assert [s["step"] for s in st] == steps
    # the guidance passes (the second forward of steps 1–3) run in full; the cached run skips blocks
    assert [st[i]["plan"] for i in (2, 4, 6)] == ["full"] * 3
    assert sum(s["blocks_run"] for s in st) < 4 * len(steps)
    assert torch.isfinite(cached).all() and rel(cached, ref) < 0.5
    assert torch.equal(slg_call(pipe), cached)  # a second call: the same run again
