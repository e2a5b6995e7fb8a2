import torch, time, sys
torch.set_num_threads(2)
import torch.nn.functional as F
m,n,k=map(int,sys.argv[1:4]); sets=8
xs=[torch.randn(m,k) for _ in range(sets)]; ws=[torch.randn(n,k) for _ in range(sets)]; b=torch.randn(n)
reps=max(5,min(2000,int(2e9/(2*m*n*k))))
for _ in range(2):
    t=time.perf_counter()
    for r in range(reps): F.linear(xs[r%sets],ws[r%sets],b)
    print(f"torch {m}x{n}x{k}: {(time.perf_counter()-t)/reps*1e6:.1f}")
