"""Run by tests/test_sync_bn.py under torchrun (2 ranks, gloo): one training step of a small conv + batch-norm
network on this rank's half of a fixed global batch, with --sync-bn's batch norm, wrapped in DDP; rank 0
saves the gradients, the outputs and the running statistics for the test to compare with one process."""

import sys

import torch

from cvtool.train import distributed
from tests.sync_bn_model import global_batch, small_net

device = distributed.init(torch.device("cpu"))
rank, world = distributed.rank(), distributed.world_size()
model = distributed.sync_batch_norm(small_net(), device)
ddp = torch.nn.parallel.DistributedDataParallel(model)
x, target = global_batch()
share = x.shape[0] // world
mine = slice(rank * share, (rank + 1) * share)
out = ddp(x[mine])
loss = torch.nn.functional.mse_loss(out, target[mine])  # a mean over this rank's share: DDP averages the ranks
loss.backward()
outputs = [torch.empty_like(out) for _ in range(world)]
torch.distributed.all_gather(outputs, out.detach())
if rank == 0:
    torch.save({"grads": {n: p.grad for n, p in model.named_parameters()}, "out": torch.cat(outputs),
                "state": {k: v for k, v in model.state_dict().items() if "running" in k}}, sys.argv[1])
distributed.barrier()  # neither rank leaves the group while the other still uses it
distributed.cleanup()
distributed.end_rank(0)  # as cvtool's own ranks end (see end_rank)
