"""`schedule:mask=…` through an accelerated pipeline against an independent reference: the
diffusers pipeline itself, with forward hooks that on a full step record the whole block stack's
deviation Δ = h_L − h_0 and on a cached step replace the last block's output by the current
h_0 + Δ (what the policy computes without running the blocks)."""

import copy

import pytest
import torch

import deltadit.diffusers as dd
import tiny
from tiny import rel


def hooked_reference(pipe, mask):
    """Hooks `pipe.transformer`'s blocks so that its forwards follow `mask` (one per step)."""
    blocks = pipe.transformer.transformer_blocks
    st = {"step": -1, "h0": None, "delta": None}

    def first_pre(_m, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        st["step"] += 1
        st["h0"] = h.detach().clone()

    def last_post(_m, _args, _kwargs, out):
        full = mask[st["step"]] == "1"
        if full:
            st["delta"] = out - st["h0"]
            return out
        return st["h0"] + st["delta"]

    blocks[0].register_forward_pre_hook(first_pre, with_kwargs=True)
    blocks[-1].register_forward_hook(last_post, with_kwargs=True)
    return st


@pytest.mark.parametrize(
    "kind,sched,steps,guidance,mask",
    [
        ("alpha", "dpm-solver++", 20, 4.5, "11011010110101101011"),
        ("alpha", "dpm-solver++", 20, 4.5, "10010000100010000101"),
        ("dit", "ddim", 10, 4.0, "1101001011"),
    ],
)
def test_schedule_matches_hooked_diffusers(kind, sched, steps, guidance, mask):
    size = dict(height=8) if kind == "dit" else dict(height=16, width=24)
    pipe = tiny.pipeline(kind, sched, layers=4)
    ref_pipe = tiny.pipeline(kind, sched, transformer=copy.deepcopy(pipe.transformer))
    st = hooked_reference(ref_pipe, mask)
    with torch.no_grad():
        ref, _ = tiny.run(ref_pipe, kind, sched, steps=steps, guidance=guidance, **size)
    assert st["step"] == steps - 1, "one transformer call per step"
    with torch.no_grad():
        plain, _ = tiny.run(tiny.pipeline(kind, sched, transformer=copy.deepcopy(pipe.transformer)), kind, sched,
                            steps=steps, guidance=guidance, **size)

    dd.accelerate(pipe, cache=f"schedule:mask={mask}")
    lat, _ = tiny.run(pipe, kind, sched, steps=steps, guidance=guidance, **size)
    blocks = [s["blocks_run"] for s in dd.stats(pipe)]
    assert blocks == [4 if b == "1" else 0 for b in mask]
    e = rel(lat, ref)
    assert e <= 1e-4, f"final latents vs the hooked diffusers pipeline: {e:.3e}"
    assert rel(lat, plain) > 10 * max(e, 1e-7), "the cached steps change the result"


def test_bad_masks_name_the_parameter():
    pipe = tiny.pipeline("alpha", "dpm-solver++", layers=4)
    with pytest.raises(ValueError, match="mask.*first bit is 1"):
        dd.accelerate(pipe, cache="schedule:mask=0111")
    with pytest.raises(ValueError, match="mask"):
        dd.accelerate(pipe, cache="schedule:mask=11x1")
    # a mask of 3 steps, run with 4: the run's step count is checked when it is known
    dd.accelerate(pipe, cache="schedule:mask=111")
    with pytest.raises(ValueError, match="mask.*4 bits"):
        tiny.run(pipe, "alpha", "dpm-solver++", steps=4, guidance=4.5)
