"""--sync-bn on the CPU: two real torchrun ranks (gloo) with cvtool's all-reduce batch norm take exactly the
single-process step on the global batch (PyTorch's own SyncBatchNorm refuses CPU tensors)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from cvtool.train import distributed
from tests.sync_bn_model import global_batch, small_net

ROOT = Path(__file__).resolve().parent.parent


def test_two_ranks_with_sync_bn_take_the_single_process_step_on_cpu(tmp_path):
    out = tmp_path / "ranks.pt"
    result = subprocess.run(
        # --standalone: torchrun picks a free port itself (no race with another test's launcher)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "sync_bn_worker.py"), str(out)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-6000:]
    ranks = torch.load(out, weights_only=True)

    model = small_net()  # one process, the whole global batch, plain batch norm
    x, target = global_batch()
    output = model(x)
    torch.nn.functional.mse_loss(output, target).backward()
    torch.testing.assert_close(ranks["out"], output.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ranks["grads"][name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    state = {k: v for k, v in model.state_dict().items() if "running" in k}
    for key, value in state.items():
        torch.testing.assert_close(ranks["state"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    # and per-rank statistics (no --sync-bn) would not: the check above can fail
    halves = [small_net()(x[:4]), small_net()(x[4:])]
    assert not torch.allclose(torch.cat([h.detach() for h in halves]), output.detach(), atol=1e-3)


def test_sync_batch_norm_converts_nested_layers_keeps_their_state_and_is_plain_in_one_process():
    model = small_net()
    model[1].running_mean.fill_(0.5)
    synced = distributed.sync_batch_norm(model, torch.device("cpu"))
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 3 and all(isinstance(m, distributed.GlobalBatchNorm) for m in norms)
    assert torch.equal(synced[1].running_mean, torch.full((6,), 0.5))
    x, _ = global_batch()
    reference = small_net()
    reference[1].running_mean.fill_(0.5)
    torch.testing.assert_close(synced(x), reference(x))  # no process group: batch norm as usual
    assert set(synced.state_dict()) == set(reference.state_dict())  # checkpoints load into plain models
