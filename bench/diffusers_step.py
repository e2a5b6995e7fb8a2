# diffusers' PixArtTransformer2DModel forward at the pixart-alpha-1024 preset's config (random
# weights, bf16, CFG batch 2, 120 text tokens), timed with CUDA events: the eager baseline.
import json, sys, torch
from diffusers import PixArtTransformer2DModel
cfg = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
           cross_attention_dim=1152, attention_bias=True, sample_size=128, patch_size=2,
           activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
           norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=4096)
with torch.device("cuda"):
    m = PixArtTransformer2DModel(**cfg).to(torch.bfloat16).eval()
dev, bf = "cuda", torch.bfloat16
x = torch.randn(2, 4, 128, 128, device=dev, dtype=bf)
t = torch.tensor([999, 999], device=dev)
enc = torch.randn(2, 120, 4096, device=dev, dtype=bf)
mask = torch.zeros(2, 120, device=dev); mask[0, :1] = 1; mask[1, :20] = 1
added = {"resolution": torch.tensor([[1024., 1024.]] * 2, device=dev, dtype=bf), "aspect_ratio": torch.tensor([[1.0]] * 2, device=dev, dtype=bf)}
times = []
with torch.no_grad():
    for i in range(13):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        m(x, encoder_hidden_states=enc, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=added)
        b.record(); torch.cuda.synchronize()
        if i >= 3: times.append(a.elapsed_time(b))
times.sort()
r = {"what": "diffusers PixArtTransformer2DModel forward, eager, bf16, batch 2 (CFG), 4096 tokens, 120 text tokens",
     "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "median_ms": times[len(times) // 2], "times_ms": times}
print(json.dumps(r)); json.dump(r, open(sys.argv[1], "w"))
