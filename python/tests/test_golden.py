"""Transformer.from_pretrained forward on the golden cases of tests/data (diffusers 0.42.1, f32):
1e-5 relative on the cpu device, 2e-2 on the sim device (the CUDA kernels in bf16 on the CPU)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import deltadit
from tiny import REPO, rel

FORWARD_CASES = [
    "pixart-tiny",
    "pixart-tiny-nonsquare-ar",
    "pixart-tiny-bf16-weights",
    "dit-tiny",
    "sd3-tiny",
    "sd35-tiny-nonsquare",
    "flux-dev-tiny",
    "flux-schnell-tiny",
    "flux-digits-forward",
]


def model_dir(data_dir, case):
    """The case folder, or the models/ folder its case.json names (as tests/common/golden.rs)."""
    d = data_dir / case
    try:
        m = json.loads((d / "case.json").read_text()).get("model")
    except (OSError, ValueError):
        m = None
    return REPO / m if m else d


def call(model, inp, **kw):
    if "img_ids" in inp:  # FLUX: packed latents, RoPE ids, dev's guidance
        keys = ("encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance")
        return model(inp["hidden_states"], **{k: inp[k] for k in keys if k in inp}, **kw)
    if "pooled_projections" in inp:
        return model(
            inp["hidden_states"],
            encoder_hidden_states=inp["encoder_hidden_states"],
            pooled_projections=inp["pooled_projections"],
            timestep=inp["timestep"],
            **kw,
        )
    if "class_labels" in inp:
        return model(inp["hidden_states"], timestep=inp["timestep"], class_labels=inp["class_labels"], **kw)
    added = None
    if "resolution" in inp:
        added = {"resolution": inp["resolution"], "aspect_ratio": inp["aspect_ratio"]}
    return model(
        inp["hidden_states"],
        encoder_hidden_states=inp["encoder_hidden_states"],
        timestep=inp["timestep"],
        added_cond_kwargs=added,
        encoder_attention_mask=inp.get("encoder_attention_mask"),
        **kw,
    )


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_golden_cpu(data_dir, case):
    m = deltadit.Transformer.from_pretrained(model_dir(data_dir, case))
    family = json.loads((data_dir / case / "case.json").read_text()).get("family", case.split("-")[0])
    assert m.family == family and m.class_name == m.config["_class_name"]
    inp = load_file(str(data_dir / case / "inputs.safetensors"))
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    out = call(m, inp)
    assert type(out).__name__ == "Transformer2DModelOutput"
    assert out.sample.dtype == torch.float32 and out.sample.device.type == "cpu"
    assert out.sample.shape == exp.shape
    e = rel(out.sample, exp)
    assert e <= 1e-5, f"{case}: rel err {e:.3e}"
    # return_dict=False: a tuple, the same values
    (again,) = call(m, inp, return_dict=False)
    assert torch.equal(again, out.sample)
    assert m.last_report.plan == "full" and m.last_report.blocks_run == m.num_blocks


def test_forward_numpy_inputs(data_dir):
    case = "pixart-tiny"
    m = deltadit.Transformer.from_pretrained(model_dir(data_dir, case))
    inp = load_file(str(data_dir / case / "inputs.safetensors"))
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    np_inp = {k: v.numpy() for k, v in inp.items()}
    np_inp["hidden_states"].setflags(write=False)  # read-only arrays work too
    out = call(m, np_inp).sample
    assert isinstance(out, torch.Tensor)
    assert rel(out, exp) <= 1e-5
    # positional arguments in the diffusers order, a 0-d timestep broadcast over the batch
    t = float(inp["timestep"][0])
    x = inp["hidden_states"]
    out1 = m(x, inp["encoder_hidden_states"], torch.tensor(t), None, None, None, inp["encoder_attention_mask"])
    out2 = m(x, encoder_hidden_states=inp["encoder_hidden_states"], timestep=torch.full((2,), t),
             encoder_attention_mask=inp["encoder_attention_mask"])
    assert torch.equal(out1.sample, out2.sample)


def test_output_dtype_follows_input(data_dir):
    case = "dit-tiny"
    m = deltadit.Transformer.from_pretrained(model_dir(data_dir, case))
    inp = load_file(str(data_dir / case / "inputs.safetensors"))
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    out = m(inp["hidden_states"].to(torch.float64), timestep=inp["timestep"], class_labels=inp["class_labels"]).sample
    assert out.dtype == torch.float64
    assert rel(out, exp) <= 1e-5


def test_pipeline_folder_resolves_transformer_subfolder(data_dir, tmp_path):
    import shutil

    shutil.copytree(data_dir / "dit-tiny", tmp_path / "transformer")
    m = deltadit.Transformer.from_pretrained(tmp_path)
    assert m.family == "dit" and m.config["_class_name"] == "DiTTransformer2DModel"
    assert m.config.num_layers == 2  # attribute access, as on a diffusers config


@pytest.mark.parametrize(
    "case",
    ["pixart-tiny", "pixart-tiny-nonsquare-ar", "dit-tiny", "sd3-tiny", "sd35-tiny-nonsquare", "flux-dev-tiny",
     "flux-schnell-tiny", "flux-digits-forward"],
)
def test_forward_golden_sim_bf16(data_dir, case):
    """The sim device runs the CUDA kernels (bf16) on the CPU through the SIMT shim."""
    if not deltadit.build_info()["sim"]:
        pytest.skip("the sim shim is not built into this package (no CUDA headers at build time)")
    m = deltadit.Transformer.from_pretrained(model_dir(data_dir, case), device="sim", dtype="bf16")
    assert m.device == "sim" and m.dtype == "bf16"
    inp = load_file(str(data_dir / case / "inputs.safetensors"))
    exp = load_file(str(data_dir / case / "expected.safetensors"))["sample"]
    e = rel(call(m, inp).sample, exp)
    assert e <= 2e-2, f"{case} on sim: rel err {e:.3e}"
