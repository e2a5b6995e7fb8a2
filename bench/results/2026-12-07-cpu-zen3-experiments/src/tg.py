import torch, time
torch.set_num_threads(1)
nk,d=1024,72
K=torch.randn(nk,16*d)[:, :d]; V=torch.randn(nk,16*d)[:, :d]
for rows in (32,64,128,256):
    Q=torch.randn(rows,16*d)[:, :d]; S=torch.randn(rows,nk)
    reps=4*1024//rows
    for f,name in ((lambda: Q@K.T,'QK'),(lambda: S@V,'PV')):
        f(); t=time.perf_counter()
        for _ in range(reps): f()
        dt=time.perf_counter()-t
        print(rows,name, f"{2*reps*rows*nk*d/dt*1e-9:.1f} GF/s")
