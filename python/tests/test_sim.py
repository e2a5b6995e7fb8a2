"""The sim device: the CUDA kernels (bf16) run on the CPU by the SIMT shim, through the same
accelerate() path as the cuda device; within 2e-2 of diffusers on small models, head dims 64
and 72."""

import pytest
import torch

import deltadit
import deltadit.diffusers as dd
import tiny
from tiny import rel

pytestmark = pytest.mark.skipif(
    not deltadit.build_info()["sim"], reason="the sim shim is not built into this package (no CUDA headers)"
)


@pytest.mark.parametrize("head_dim", [64, 72])
@pytest.mark.parametrize("kind", ["sigma", "dit"])
def test_sim_pipeline_within_bf16_tolerance(kind, head_dim):
    pipe = tiny.pipeline(kind, "ddim", layers=2, head_dim=head_dim)
    size = dict(height=8) if kind == "dit" else dict(height=16, width=24)
    lat0, img0 = tiny.run(pipe, kind, "ddim", steps=4, guidance=4.0, **size)
    dd.accelerate(pipe, device="sim")
    tr = pipe.transformer.deltadit
    assert tr.device == "sim" and tr.dtype == "bf16"
    assert pipe.transformer.dtype == torch.float32  # the module keeps the pipeline's dtype
    lat1, img1 = tiny.run(pipe, kind, "ddim", steps=4, guidance=4.0, **size)
    assert lat1.dtype == torch.float32
    assert rel(lat1, lat0) <= 2e-2, f"latents {rel(lat1, lat0):.3e}"
    assert rel(img1, img0) <= 2e-2, f"images {rel(img1, img0):.3e}"


def test_sim_forward_f16_and_bf16_module():
    """A bf16 module on the sim device in f16: the module's dtype in and out, the runtime's own."""
    mod = tiny.pixart(layers=2, head_dim=64)
    ref_mod = tiny.pixart(layers=2, head_dim=64)
    m = deltadit.Transformer.from_diffusers(mod.to(torch.bfloat16), device="sim")
    assert m.dtype == "bf16"  # the module's half dtype by default
    m16 = deltadit.Transformer.from_diffusers(mod, device="sim", dtype=torch.float16)
    assert m16.dtype == "f16"
    ref_mod.load_state_dict({k: v.float() for k, v in mod.state_dict().items()})
    cond, cmask, _, _ = tiny.prompts(2)
    x = torch.randn(2, 4, 8, 12)
    kw = dict(encoder_hidden_states=cond, encoder_attention_mask=cmask, timestep=torch.tensor([900, 20]))
    with torch.no_grad():
        ref = ref_mod(x, **kw).sample
    out = m(x.to(torch.bfloat16), **kw).sample
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) <= 2e-2
    assert rel(m16(x, **kw).sample, ref) <= 2e-2


def test_sim_cache_delta():
    pipe = tiny.pipeline("sigma", "dpm-solver++", layers=3, head_dim=72)
    dd.accelerate(pipe, device="sim", cache="delta:n=2,nc=1,b=3")
    a, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=6, guidance=4.5, height=16, width=24)
    plans = [s["plan"] for s in dd.stats(pipe)]
    assert plans == ["full+rear", "cached-rear-1", "full+front", "cached-front-1", "full+front", "cached-front-1"], plans
    b, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=6, guidance=4.5, height=16, width=24)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_sim_flux_pipeline(dev):
    """FluxPipeline with true CFG on the sim device (bf16 kernels, head dim 64), native against
    accelerated, uncached and with a cache policy per cache_context."""
    pipe = tiny.flux_pipeline(dev, head_dim=64)
    lat0 = tiny.flux_run(pipe, 4, True)
    dd.accelerate(pipe, device="sim")
    assert pipe.transformer.deltadit.dtype == "bf16"
    lat1 = tiny.flux_run(pipe, 4, True)
    assert rel(lat1, lat0) <= 2e-2, f"{rel(lat1, lat0):.3e}"
    dd.accelerate(pipe, cache="fora:n=2")
    lat2 = tiny.flux_run(pipe, 4, True)
    assert torch.isfinite(lat2).all() and sum(s["blocks_run"] for s in dd.stats(pipe)) < 2 * 4 * 4
