"""Error paths: every failure a Python exception of the deltadit.Error family (ValueError for what
the caller can fix, RuntimeError for the backend's, OSError for files), raised at accelerate time
for what is unsupported, never a crash."""

import pytest
import torch

import deltadit
import deltadit.diffusers as dd
import tiny


def test_hierarchy():
    assert issubclass(deltadit.UnsupportedError, ValueError)
    assert issubclass(deltadit.ParameterError, ValueError)
    assert issubclass(deltadit.InputError, ValueError)
    assert issubclass(deltadit.ConfigError, ValueError)
    assert issubclass(deltadit.WeightError, ValueError)
    assert issubclass(deltadit.BackendError, RuntimeError)
    assert issubclass(deltadit.DeviceUnavailableError, deltadit.BackendError)
    assert issubclass(deltadit.OutOfMemoryError, deltadit.BackendError)
    assert issubclass(deltadit.CachePlanError, RuntimeError)
    assert issubclass(deltadit.FileError, OSError)
    for cls in (deltadit.UnsupportedError, deltadit.BackendError, deltadit.FileError):
        assert issubclass(cls, deltadit.Error)


def test_another_transformer_class():
    import diffusers

    class MyPixArt(diffusers.PixArtTransformer2DModel):
        pass

    pipe = tiny.pipeline("sigma", "ddim", transformer=tiny.randomize(MyPixArt(
        num_attention_heads=2, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=1,
        cross_attention_dim=144, caption_channels=64, sample_size=16), 0))
    with pytest.raises(deltadit.UnsupportedError, match="MyPixArt is not supported") as e:
        dd.accelerate(pipe)
    assert e.value.kind == "unsupported_class" and isinstance(e.value, ValueError)
    assert not dd.is_accelerated(pipe)


def test_pipeline_without_transformer():
    import diffusers

    pipe = diffusers.DDPMPipeline(unet=diffusers.UNet2DModel(
        sample_size=8, block_out_channels=(8, 8), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, layers_per_block=1),
        scheduler=diffusers.DDPMScheduler())
    with pytest.raises(deltadit.UnsupportedError, match="no transformer"):
        dd.accelerate(pipe)


def test_attention_processor_not_implemented():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Custom(AttnProcessor2_0):
        pass

    pipe = tiny.pipeline("sigma", "ddim", layers=1)
    pipe.transformer.set_attn_processor(Custom())
    with pytest.raises(deltadit.UnsupportedError, match="attention processor .*Custom") as e:
        dd.accelerate(pipe)
    assert e.value.kind == "unsupported_attention_processor"
    assert e.value.details["processor"] == "Custom"


def test_fused_qkv_projections_rejected():
    pipe = tiny.pipeline("sigma", "ddim", layers=1)
    pipe.transformer.fuse_qkv_projections()
    with pytest.raises(deltadit.UnsupportedError, match="FusedAttnProcessor2_0"):
        dd.accelerate(pipe)


@pytest.mark.parametrize("device", ["sim", "cuda"])
def test_head_dim_without_kernel(device):
    """The kernel devices have attention kernels for head dims 64, 72 and 128 only; the CPU runs any."""
    pipe = tiny.pipeline("sigma", "ddim", layers=1, head_dim=48, heads=3)
    with pytest.raises(deltadit.UnsupportedError, match="attention_head_dim 48 has no attention kernel") as e:
        dd.accelerate(pipe, device=device)
    assert e.value.kind == "unsupported_head_dim"
    assert e.value.details["head_dim"] == 48 and e.value.details["supported"] == [64, 72, 128]
    dd.accelerate(pipe, device="cpu")  # the CPU backend runs it
    assert dd.is_accelerated(pipe)


def test_bad_cache_spec():
    pipe = tiny.pipeline("dit", "ddim", layers=3)
    with pytest.raises(deltadit.ParameterError, match="a policy among none, delta"):
        dd.accelerate(pipe, cache="teacache")
    with pytest.raises(deltadit.ParameterError, match="cache delta parameter"):
        dd.accelerate(pipe, cache="delta:x=1")
    with pytest.raises(deltadit.ParameterError, match="nc") as e:
        dd.accelerate(pipe, cache="delta:nc=3")  # the model has 3 blocks
    assert e.value.details["name"] == "nc"
    assert not dd.is_accelerated(pipe)


def test_cache_bound_to_the_step_count_fails_at_the_call():
    """b ≤ steps can only be checked once the call's step count is known: a ParameterError then,
    before any block runs."""
    pipe = tiny.pipeline("dit", "ddim", layers=3)
    dd.accelerate(pipe, cache="delta:n=2,nc=1,b=50")
    with pytest.raises(deltadit.ParameterError, match="b"):
        tiny.run(pipe, "dit", "ddim", steps=4, guidance=4.0, height=8)
    dd.accelerate(pipe, cache="delta:n=2,nc=1,b=2")
    tiny.run(pipe, "dit", "ddim", steps=4, guidance=4.0, height=8)  # and the pipeline still works


def test_bad_device_and_dtype():
    mod = tiny.dit(layers=1)
    with pytest.raises(deltadit.ParameterError, match="device"):
        deltadit.Transformer.from_diffusers(mod, device="tpu")
    with pytest.raises(deltadit.ParameterError, match="dtype"):
        deltadit.Transformer.from_diffusers(mod, dtype="int8")
    with pytest.raises(deltadit.ParameterError, match="f32 on the CPU backend"):
        deltadit.Transformer.from_diffusers(mod, device="cpu", dtype="bf16")
    with pytest.raises(deltadit.UnsupportedError, match="bf16 or f16") as e:
        deltadit.Transformer.from_diffusers(mod, device="sim", dtype="f32")
    assert e.value.backend_kind == "unsupported_dtype"


def test_cuda_without_a_gpu():
    if deltadit.cuda_status()[0]:
        pytest.skip("a usable GPU is present")
    with pytest.raises(deltadit.DeviceUnavailableError) as e:
        deltadit.Transformer.from_diffusers(tiny.dit(layers=1), device="cuda")
    assert isinstance(e.value, RuntimeError) and e.value.backend_kind in ("no_device", "not_built")


def test_meta_weights():
    import diffusers

    with torch.device("meta"):
        mod = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=72, in_channels=4,
                                              out_channels=8, num_layers=1, sample_size=8)
    with pytest.raises(deltadit.UnsupportedError, match="meta device"):
        deltadit.Transformer.from_diffusers(mod, device="cpu")


def test_files(tmp_path, data_dir):
    with pytest.raises(deltadit.FileError) as e:
        deltadit.Transformer.from_pretrained(tmp_path / "nope")
    assert isinstance(e.value, OSError)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(deltadit.UnsupportedError, match="UNet2DConditionModel"):
        deltadit.Transformer.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"_class_name": "DiTTransformer2DModel", "activation_fn": "geglu"}')
    with pytest.raises(deltadit.ConfigError, match="activation_fn"):
        deltadit.Transformer.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text((data_dir / "dit-tiny" / "config.json").read_text())
    with pytest.raises(deltadit.FileError, match="no .safetensors"):
        deltadit.Transformer.from_pretrained(tmp_path / "m")


def test_missing_and_misshapen_weights(data_dir):
    mod = tiny.dit(layers=1)
    state = mod.state_dict()
    del state["proj_out_2.bias"]
    mod2 = tiny.dit(layers=1)
    mod2.proj_out_2.bias = None
    with pytest.raises(deltadit.WeightError, match="missing weight `proj_out_2.bias`"):
        deltadit.Transformer.from_diffusers(mod2)
    mod3 = tiny.dit(layers=1)
    with torch.no_grad():
        mod3.proj_out_2.bias.data = torch.zeros(5)
    with pytest.raises(deltadit.WeightError, match="proj_out_2.bias") as e:
        deltadit.Transformer.from_diffusers(mod3)
    assert e.value.kind == "weight_shape" and e.value.details["found"] == [5]
    mod4 = tiny.dit(layers=1)
    with torch.no_grad():
        mod4.proj_out_2.bias[0] = float("nan")
    with pytest.raises(deltadit.WeightError, match="finite"):
        deltadit.Transformer.from_diffusers(mod4)


def test_bad_inputs():
    m = deltadit.Transformer.from_diffusers(tiny.pixart(layers=1))
    cond, cmask, _, _ = tiny.prompts(1)
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([10.0])
    ok = dict(encoder_hidden_states=cond, encoder_attention_mask=cmask, timestep=t)
    with pytest.raises(deltadit.InputError, match="encoder_hidden_states"):
        m(x, timestep=t)
    with pytest.raises(deltadit.InputError, match="timestep"):
        m(x, encoder_hidden_states=cond)
    with pytest.raises(deltadit.InputError, match="hidden_states"):
        m(torch.randn(4, 8, 8), **ok)
    with pytest.raises(deltadit.InputError, match="channels"):
        m(torch.randn(1, 3, 8, 8), **ok)
    with pytest.raises(deltadit.InputError, match="patch size"):
        m(torch.randn(1, 4, 7, 8), **ok)
    with pytest.raises(deltadit.InputError, match="timestep"):
        m(x, **{**ok, "timestep": torch.tensor([1.0, 2.0, 3.0])})
    with pytest.raises(deltadit.InputError, match="encoder_attention_mask"):
        m(x, **{**ok, "encoder_attention_mask": torch.ones(1, 1, 8)})
    bad = x.clone()
    bad[0, 1, 2, 3] = float("inf")
    with pytest.raises(deltadit.InputError, match="finite") as e:
        m(bad, **ok)
    assert e.value.kind == "non_finite_input"
    with pytest.raises(deltadit.UnsupportedError, match="attention_mask"):
        m(x, attention_mask=torch.ones(1, 16), **ok)
    with pytest.raises(deltadit.UnsupportedError, match="cross_attention_kwargs"):
        m(x, cross_attention_kwargs={"scale": 0.5}, **ok)
    with pytest.raises(TypeError):
        m(x, class_labels=torch.tensor([1]), **ok)  # not an argument of the PixArt forward
    with pytest.raises(deltadit.InputError):
        m("not a tensor", **ok)
    assert m(x, **ok).sample.shape == (1, 8, 8, 8)  # and it still works


def test_cache_needs_step_index():
    m = deltadit.Transformer.from_diffusers(tiny.dit(layers=2), cache="delta")
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(deltadit.ParameterError, match="step="):
        m(x, timestep=torch.tensor([5]), class_labels=torch.tensor([1]))
    m(x, timestep=torch.tensor([5]), class_labels=torch.tensor([1]), step=0, num_steps=4)
    with pytest.raises(deltadit.ParameterError, match="in order"):
        m(x, timestep=torch.tensor([5]), class_labels=torch.tensor([1]), step=2, num_steps=4)


def test_stats_of_a_plain_pipeline():
    with pytest.raises(deltadit.ParameterError, match="not accelerated"):
        dd.stats(tiny.pipeline("dit", "ddim", layers=1))


def test_native_views_reject_what_they_cannot_read_in_place():
    """The native module reads host tensors in place: a non-contiguous or non-float32 tensor is an
    error there (the Python side converts before), never a silent copy."""
    m = deltadit.Transformer.from_diffusers(tiny.dit(layers=1))
    sess = m._rt.session(1, 8, 8, class_labels=[1])
    x = torch.randn(1, 4, 8, 8)
    t = torch.tensor([3.0])
    out = torch.empty(sess.output_shape)
    ptr = out.data_ptr()
    sess.forward(x, t, out, 0, 1)
    assert out.data_ptr() == ptr and torch.isfinite(out).all()  # written in place
    with pytest.raises(ValueError, match="not contiguous"):
        sess.forward(torch.randn(1, 4, 8, 16)[..., ::2], t, out, 0, 1)
    with pytest.raises(TypeError, match="float32"):
        sess.forward(x.double(), t, out, 0, 1)
    with pytest.raises(deltadit.InputError, match="overlaps"):
        buf = torch.randn(2048)
        sess.forward(buf[:256].view(1, 4, 8, 8), t, buf[100:612].view(1, 8, 8, 8), 0, 1)
