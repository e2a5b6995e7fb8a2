import torch, time
torch.set_num_threads(2)
n=2048*1152; sets=4
src=[torch.randn(n) for _ in range(sets)]; dst=[torch.randn(n) for _ in range(sets)]
def med(f):
    ts=[]
    for r in range(200):
        s=r%sets; t=time.perf_counter(); f(s); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[len(ts)//2]*1e6
for _ in range(3):
    print(f"torch copy {med(lambda s: dst[s].copy_(src[s])):.1f} us  add {med(lambda s: dst[s].add_(src[s])):.1f} us")
