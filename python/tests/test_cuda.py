"""The cuda device: CUDA tensors cross through DLPack, device to device on the backend's stream,
ordered after and before the caller's (torch's current) stream; bf16/f16 within 2e-2 of diffusers.
These run where a GPU, its driver and the kernels built into the package are present, and skip
with the reason otherwise."""

import pytest
import torch
from safetensors.torch import load_file

import deltadit
import deltadit.diffusers as dd
import tiny
from tiny import rel


def _why_not():
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
    ok, why = deltadit.cuda_status()
    return None if ok else f"deltadit's cuda device is unusable: {why}"


WHY = _why_not()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY is not None, reason=f"skipped: {WHY}")]


def golden_call(m, inp):
    if "img_ids" in inp:  # FLUX: packed latents, RoPE ids, dev's guidance
        keys = ("encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")
        return m(inp["hidden_states"], **{k: inp[k] for k in keys if k in inp}).sample
    if "pooled_projections" in inp:
        keys = ("encoder_hidden_states", "pooled_projections", "timestep")
        return m(inp["hidden_states"], **{k: inp[k] for k in keys}).sample
    if "class_labels" in inp:
        return m(inp["hidden_states"], timestep=inp["timestep"], class_labels=inp["class_labels"]).sample
    added = {"resolution": inp["resolution"], "aspect_ratio": inp["aspect_ratio"]} if "resolution" in inp else None
    return m(
        inp["hidden_states"],
        encoder_hidden_states=inp["encoder_hidden_states"],
        timestep=inp["timestep"],
        added_cond_kwargs=added,
        encoder_attention_mask=inp.get("encoder_attention_mask"),
    ).sample


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize(
    "case",
    ["pixart-tiny", "pixart-tiny-nonsquare-ar", "dit-tiny", "sd3-tiny", "sd35-tiny-nonsquare", "flux-dev-tiny",
     "flux-schnell-tiny"],
)
def test_golden_forward_cuda(data_dir, case, dtype):
    m = deltadit.Transformer.from_pretrained(data_dir / case, device="cuda", dtype=dtype)
    assert m.device == "cuda:0" and m.dtype == dtype
    inp = {k: v.cuda() for k, v in load_file(str(data_dir / case / "inputs.safetensors")).items()}
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    out = golden_call(m, inp)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    assert rel(out, exp) <= 2e-2


def test_side_stream_ordering(data_dir):
    """Inputs written on a side stream right before the call, outputs read on it right after:
    the runtime orders its copies on that (the current) stream without a host sync."""
    case = "pixart-tiny"
    m = deltadit.Transformer.from_pretrained(data_dir / case, device="cuda")
    cpu = load_file(str(data_dir / case / "inputs.safetensors"))
    ref = golden_call(m, {k: v.cuda() for k, v in cpu.items()}).clone()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            inp = {k: v.to("cuda", non_blocking=True) for k, v in cpu.items()}
            inp["hidden_states"] = inp["hidden_states"] * 1.0  # a kernel on the side stream
            out = golden_call(m, inp) + 0.0  # read on the side stream
    s.synchronize()
    assert torch.equal(out, ref)


def test_host_tensors_on_the_cuda_device(data_dir):
    case = "dit-tiny"
    m = deltadit.Transformer.from_pretrained(data_dir / case, device="cuda")
    inp = load_file(str(data_dir / case / "inputs.safetensors"))
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    out = golden_call(m, inp)
    assert out.device.type == "cpu" and rel(out, exp) <= 2e-2


def test_from_diffusers_half_module_on_gpu():
    mod = tiny.pixart(layers=2, head_dim=72)
    ref = tiny.pixart(layers=2, head_dim=72).cuda()
    half = mod.cuda().half()
    ref.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    m = deltadit.Transformer.from_diffusers(half)
    assert m.device == "cuda:0" and m.dtype == "f16"
    cond, cmask, _, _ = tiny.prompts(2)
    x = torch.randn(2, 4, 8, 12, device="cuda")
    kw = dict(encoder_hidden_states=cond.cuda(), encoder_attention_mask=cmask.cuda(), timestep=torch.tensor([900, 20], device="cuda"))
    with torch.no_grad():
        r = ref(x, **kw).sample
    out = m(x.half(), **kw).sample
    assert out.device.type == "cuda" and out.dtype == torch.float16
    assert rel(out.float(), r) <= 2e-2


@pytest.mark.parametrize("kind", ["alpha", "sigma", "dit"])
def test_pipeline_on_gpu(kind):
    pipe = tiny.pipeline(kind, "ddim", layers=2).to("cuda")
    size = dict(height=8) if kind == "dit" else dict(height=16, width=24)
    lat0, img0 = tiny.run(pipe, kind, "ddim", steps=4, guidance=4.0, **size)
    dd.accelerate(pipe, device="cuda")
    assert pipe.transformer.device.type == "cuda" and pipe.transformer.deltadit.dtype == "bf16"
    lat1, img1 = tiny.run(pipe, kind, "ddim", steps=4, guidance=4.0, **size)
    assert lat1.device.type == "cuda"
    assert rel(lat1, lat0) <= 2e-2 and rel(img1, img0) <= 2e-2


def test_cache_on_gpu_repeats():
    pipe = tiny.pipeline("sigma", "dpm-solver++", layers=4).to("cuda")
    dd.accelerate(pipe, device="cuda", cache="delta")
    a, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=20, guidance=4.5, height=16, width=24)
    st = dd.stats(pipe)
    b, _ = tiny.run(pipe, "sigma", "dpm-solver++", steps=20, guidance=4.5, height=16, width=24)
    assert torch.equal(a, b)
    assert sum(s["blocks_run"] for s in st) < 20 * 4


@pytest.mark.parametrize("kind", ["sd3", "sd35"])
def test_sd3_pipeline_on_gpu(kind):
    """StableDiffusion3Pipeline (flow-match Euler, CFG) on the GPU, native against accelerated
    (bf16 kernels, head dim 64), and with a cache policy."""
    pipe = tiny.pipeline(kind, "flow-match-euler", layers=3, head_dim=64).to("cuda")
    kw = dict(steps=8, guidance=5.0, height=64, width=96)
    lat0, _ = tiny.run(pipe, kind, "flow-match-euler", **kw)
    dd.accelerate(pipe, device="cuda")
    lat1, _ = tiny.run(pipe, kind, "flow-match-euler", **kw)
    assert lat1.device.type == "cuda" and rel(lat1, lat0) <= 2e-2
    dd.accelerate(pipe, cache="delta")
    lat2, _ = tiny.run(pipe, kind, "flow-match-euler", **kw)
    assert torch.isfinite(lat2).all() and sum(s["blocks_run"] for s in dd.stats(pipe)) < 8 * 3


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "schnell"])
def test_flux_pipeline_on_gpu(dev):
    """FluxPipeline with true CFG on the GPU: CUDA latents and σ timesteps device to device (the
    runtime writes the model's 1000·σ), native against accelerated (bf16, head dim 64), and with a
    cache policy per cache_context."""
    pipe = tiny.flux_pipeline(dev, head_dim=64, device="cuda")
    lat0 = tiny.flux_run(pipe, 4, True, device="cuda")
    dd.accelerate(pipe, device="cuda")
    lat1 = tiny.flux_run(pipe, 4, True, device="cuda")
    assert lat1.device.type == "cuda" and rel(lat1, lat0) <= 2e-2, f"{rel(lat1, lat0):.3e}"
    dd.accelerate(pipe, cache="fora:n=2")
    lat2 = tiny.flux_run(pipe, 4, True, device="cuda")
    st = dd.stats(pipe)
    assert [s["step"] for s in st] == [i for i in range(4) for _ in range(2)]
    assert torch.isfinite(lat2).all() and sum(s["blocks_run"] for s in st) < 2 * 4 * 4
