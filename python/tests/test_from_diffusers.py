"""Transformer.from_diffusers: the weights of a loaded diffusers module taken from its tensors (no
file), the forward equal to the module's own (f32, CPU: 1e-5 relative)."""

import pytest
import torch

import deltadit
import tiny
from tiny import rel


def pixart_inputs(b=2, h=8, w=12, tokens=8, features=64, micro=False, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, h, w, generator=g)
    ehs = torch.randn(b, tokens, features, generator=g)
    mask = torch.ones(b, tokens)
    mask[1, tokens - 3 :] = 0
    t = torch.tensor([999.0, 421.0][:b])
    kw = dict(encoder_hidden_states=ehs, timestep=t, encoder_attention_mask=mask)
    if micro:
        kw["added_cond_kwargs"] = {
            "resolution": torch.tensor([[h * 8.0, w * 8.0]] * b),
            "aspect_ratio": torch.tensor([[h / w]] * b),
        }
    return x, kw


@pytest.mark.parametrize("micro", [False, True])
def test_pixart_forward_matches_module(micro):
    mod = tiny.pixart(sample_size=128 if micro else 16, micro=micro, layers=3)
    m = deltadit.Transformer.from_diffusers(mod)
    assert m.device == "cpu" and m.dtype == "f32" and m.num_blocks == 3
    assert m.weights.startswith("torch PixArtTransformer2DModel (float32 on cpu)")
    assert dict(m.config) == dict(mod.config)
    x, kw = pixart_inputs(micro=micro)
    with torch.no_grad():
        ref = mod(x, **kw).sample
    out = m(x, **kw).sample
    assert rel(out, ref) <= 1e-5


def test_dit_forward_matches_module():
    mod = tiny.dit(layers=3, sample_size=8)
    m = deltadit.Transformer.from_diffusers(mod)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([999, 500, 3])
    labels = torch.tensor([4, 1000, 17])  # 1000: the null class
    with torch.no_grad():
        ref = mod(x, timestep=t, class_labels=labels).sample
    out = m(x, t, labels).sample
    assert rel(out, ref) <= 1e-5


def test_half_precision_module_weights():
    """A bf16 module: its weights converted on the way (the forward compared with the module's
    weights in f32)."""
    mod = tiny.pixart(layers=2).to(torch.bfloat16)
    m = deltadit.Transformer.from_diffusers(mod)
    assert "bfloat16" in m.weights
    ref_mod = tiny.pixart(layers=2)
    ref_mod.load_state_dict({k: v.float() for k, v in mod.state_dict().items()})
    x, kw = pixart_inputs()
    with torch.no_grad():
        ref = ref_mod(x, **kw).sample
    assert rel(m(x, **kw).sample, ref) <= 1e-5


def test_conditioning_reused_and_rebuilt():
    """A run's context is rebuilt when the conditioning changes (by value or in place), reused
    when only the latents and the timestep do."""
    mod = tiny.pixart(layers=2)
    m = deltadit.Transformer.from_diffusers(mod)
    x, kw = pixart_inputs()
    out1 = m(x, **kw).sample
    s1 = m._session
    out2 = m(x * 0.5, **{**kw, "timestep": kw["timestep"] + 1}).sample
    assert m._session is s1  # same conditioning: same session
    kw2 = dict(kw, encoder_hidden_states=kw["encoder_hidden_states"].clone())
    m(x, **kw2)
    assert m._session is s1  # equal by value: still the same
    kw2["encoder_hidden_states"].mul_(2)  # in place
    out3 = m(x, **kw2).sample
    assert m._session is not s1
    with torch.no_grad():
        ref3 = mod(x, **kw2).sample
    assert rel(out3, ref3) <= 1e-5
    assert not torch.equal(out1, out2)


def test_no_file_written(tmp_path, monkeypatch):
    """from_diffusers reads the module's tensors, never a file (the working directory stays empty)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    mod = tiny.dit(layers=2)
    deltadit.Transformer.from_diffusers(mod)
    assert list(tmp_path.iterdir()) == []
