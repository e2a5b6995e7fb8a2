"""The GIL is released while the runtime computes: another Python thread keeps running during a
forward (with the GIL held it would stall for the forward's whole duration)."""

import threading
import time

import torch

import deltadit
import tiny


def test_forward_releases_the_gil():
    mod = tiny.pixart(layers=6, heads=4, head_dim=72)
    m = deltadit.Transformer.from_diffusers(mod, threads=1)
    cond, cmask, _, _ = tiny.prompts(2)
    x = torch.randn(2, 4, 32, 32)
    kw = dict(encoder_hidden_states=cond, encoder_attention_mask=cmask, timestep=torch.tensor([500, 500]))
    m(x, **kw)  # the run's context, built once
    runs = 6
    done = threading.Event()
    times = []

    def work():
        for _ in range(runs):
            m(x, **kw)
            times.append(m.last_report.time_s)
        done.set()

    th = threading.Thread(target=work)
    gaps, last = [], time.perf_counter()
    th.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    th.join()
    forward = min(times)
    print(f"forward {forward:.4f} s, longest gap {max(gaps):.4f} s")
    assert forward > 0.02, f"forward too short ({forward:.4f} s) to tell"
    # Holding the GIL would leave this loop without a turn for a whole forward; released, it only
    # waits for the switch interval and the Python-side conversions.
    assert max(gaps) < 0.6 * forward + 0.01, f"longest gap {max(gaps):.4f} s, forward {forward:.4f} s"
