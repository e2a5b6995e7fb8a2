import torch, time, sys
import torch.nn.functional as F
torch.set_num_threads(2)
B,H,T,d=2,16,1024,72
x=torch.randn(B*T,3*H*d)
D=H*d
def heads(t,n): return t.view(B,n,H,d).transpose(1,2)
def f():
    return F.scaled_dot_product_attention(heads(x[:, :D], T), heads(x[:, D:2 * D], T), heads(x[:, 2 * D:], T), scale=d**-0.5)
for _ in range(3): f()
ts=[]
for _ in range(int(sys.argv[1]) if len(sys.argv)>1 else 15):
    t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
ts.sort(); print(f"torch sdpa median {ts[len(ts)//2]*1e3:.2f} ms min {ts[0]*1e3:.2f}")
