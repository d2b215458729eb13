"""Run by tests/test_distributed.py under torchrun: a few data-parallel LoRA steps on a tiny GPT;
rank 0 saves the trainable parameters and what was communicated to the file argv[1]."""
import sys

import torch

from minift.distributed import init_from_env, leave, rank_and_world
from minift.train import TrainConfig, train


def setup(seed=0):
    """The tiny model, its LoRA and the data: identical in every process for a seed."""
    from minift.model import GPT, GPTConfig
    from minift.peft.lora import LoRAConfig, apply_lora
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16))
    apply_lora(model, LoRAConfig(r=2, alpha=4, targets=("c_attn", "c_fc")))
    for n, p in model.named_parameters():                      # B = 0 would make step 1 trivial
        if p.requires_grad:
            with torch.no_grad():
                p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(seed + 1)
    seqs = torch.randint(0, 32, (24, 9), generator=g)
    keep = torch.rand(24, 8, generator=g) < torch.rand(24, 1, generator=g)   # each row its own loss mask
    keep[:, 0] = True
    data = [{"idx": s[:-1], "targets": s[1:].masked_fill(~k, -100)} for s, k in zip(seqs, keep)]
    return model, data


if __name__ == "__main__":
    torch.set_num_threads(1)
    init_from_env("gloo")
    rank, world = rank_and_world()
    model, data = setup()
    hist = train(model, data, TrainConfig(steps=int(sys.argv[2]), batch_size=2, lr=1e-2, warmup_steps=0,
                                          progress=False))
    if rank == 0:
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save({"state": state, "world": world, "comm": [h["comm_bytes"] for h in hist],
                    "loss": [h["loss"] for h in hist]}, sys.argv[1])
    leave()
