"""Data-parallel training with torch.distributed (gloo) on the torchrun contract.

Weir starts the workers and sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and
LOCAL_RANK; `init_process_group` reads them (env://), as under torchrun. Each
worker fits a linear model to its equal shard of one seeded dataset;
DistributedDataParallel averages the gradients, so every step moves the model
exactly as one process on the whole dataset would (up to float64 rounding).
Without the contract (no `distributed:` on the step) it trains as one process,
which is how the test compares the two.

Rank 0 writes the model (a torch state dict) and its weights as JSON.
Needs torch (CPU is enough): pip install torch
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

distributed = "RANK" in os.environ
if distributed:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
else:
    rank, world = 0, 1

n, features = int(os.environ.get("N", "4096")), 8
epochs = int(os.environ.get("EPOCHS", "60"))
if n % world:
    raise SystemExit(f"N={n} must divide into {world} equal shards for the average gradient to be exact")

generator = torch.Generator().manual_seed(42)
x = torch.randn(n, features, generator=generator, dtype=torch.float64)
true_weight = torch.arange(1, features + 1, dtype=torch.float64) / features
y = (x @ true_weight + 0.5 + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)).unsqueeze(1)
lo, hi = rank * n // world, (rank + 1) * n // world
x, y = x[lo:hi], y[lo:hi]

model = torch.nn.Linear(features, 1, dtype=torch.float64)
with torch.no_grad():
    model.weight.zero_()
    model.bias.zero_()
trained = DistributedDataParallel(model) if distributed else model
optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
for epoch in range(epochs):
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(trained(x), y)
    loss.backward()
    optimizer.step()
    if distributed:
        # The reported loss is the whole dataset's: the shards' mean.
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
    if rank == 0 and (epoch % 10 == 9 or epoch == epochs - 1):
        with open(os.environ["WEIR_METRICS_FILE"], "a") as f:
            f.write(json.dumps({"key": "loss", "value": loss.item(), "step": epoch}) + "\n")

params = torch.cat([p.detach().flatten() for p in model.parameters()])
if distributed:
    # DDP keeps the replicas in step; check it rather than trust it.
    gathered = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    spread = max((g - params).abs().max().item() for g in gathered)
    if spread != 0.0:
        raise SystemExit(f"rank {rank}: replicas diverged by {spread}")
how = f"{dist.get_backend()}, replicas identical" if distributed else "single process"
print(f"rank {rank} of {world} ({how}): loss {loss.item():.6f}", flush=True)
if rank == 0:
    outputs = os.environ["WEIR_OUTPUTS_DIR"]
    torch.save(model.state_dict(), os.path.join(outputs, "model"))
    with open(os.path.join(outputs, "weights"), "w") as f:
        json.dump({"world": world, "weight": model.weight.flatten().tolist(), "bias": model.bias.item()}, f)
if distributed:
    # Every rank leaves together: rank 0 hosts the rendezvous store, and a
    # rank whose peers vanish mid-teardown can abort in gloo's threads
    # ("terminate called without an active exception") after its work is done.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    # Skips C++ static destructors racing those threads at interpreter exit.
    os._exit(0)
