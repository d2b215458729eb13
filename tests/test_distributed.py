"""Data-parallel training: 2 gloo processes x batch b take the same steps as 1 process with
gradient accumulation over 2 micro-batches of b, and only the trainable gradients travel."""
import os
import subprocess
import sys

import pytest
import torch

from minift.distributed import allreduce_gradients, sum_over_ranks, per_rank_batch, rank_and_world
from minift.train import TrainConfig, train

pytestmark = pytest.mark.core
STEPS = 3


def test_two_processes_equal_one_process_with_gradient_accumulation(tmp_path):
    sys.path.insert(0, "tests")
    from ddp_worker import setup
    out = tmp_path / "ddp.pt"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "tests/ddp_worker.py", str(out), str(STEPS)],
                       capture_output=True, text=True, timeout=180,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)})   # torchrun's log folder
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["world"] == 2
    model, data = setup()
    hist = train(model, data, TrainConfig(steps=STEPS, batch_size=2, grad_accum=2, lr=1e-2, warmup_steps=0,
                                          progress=False))
    mine = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert set(mine) == set(got["state"])
    for n, p in mine.items():
        torch.testing.assert_close(got["state"][n], p, atol=1e-6, rtol=1e-5)
    # the rows keep different numbers of targets: both runs take one mean over each step's tokens, so the
    # weights n_j / N need N summed over the ranks; the logged losses are that mean too
    torch.testing.assert_close(torch.tensor(got["loss"]), torch.tensor([h["loss"] for h in hist]), atol=1e-6, rtol=1e-6)
    n_trainable = sum(p.numel() for p in mine.values())
    n_all = sum(p.numel() for p in model.parameters())
    assert got["comm"] == [4 * n_trainable] * STEPS                   # float32 adapter gradients only
    assert n_trainable < n_all / 2


def test_outside_a_process_group_nothing_is_communicated():
    assert rank_and_world() == (0, 1)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    assert allreduce_gradients([p]) == 0 and torch.equal(p.grad, torch.full((3,), 2.0))
    assert sum_over_ranks(1.5) == 1.5


def test_a_world_size_that_does_not_divide_the_batch_raises():
    assert per_rank_batch(16, 2) == 8
    with pytest.raises(ValueError, match="not divisible by world_size=3"):
        per_rank_batch(16, 3)
    with pytest.raises(ValueError, match="world_size"):
        per_rank_batch(16, 0)


def test_leave_exits_with_its_code_and_loses_no_output():
    """leave() skips Python's shutdown (os._exit), so it must flush what was printed: to a pipe, print()
    buffers, and os._exit alone would drop it."""
    code = ("import sys; from minift.distributed import leave; print('out', end=''); "
            "print('err', end='', file=sys.stderr); leave(3)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # buffered, as usual
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out", "err")
