"""Device and dtype follow the model in the alignment trainers, the evaluations, the data and the
distributed helpers (DESIGN.md, "How a method is written").

Two kinds of test:
- dtype-following on the CPU (runs everywhere): every trainer takes a few steps on a tiny float64
  GPT and leaves float64 trainables behind, with finite losses. A tensor made with the default
  dtype (a float32 value head, a float32 label or mask in a float64 product) fails here the same
  way a tensor made on the default device fails on a GPU: this is the CPU proxy for devices.
- CUDA equals CPU (`cuda_device`: skipped without a GPU): the same runs from the same init, once
  with the model on the CPU and once on the GPU, give the same losses within a stated tolerance.
"""
import copy
import math

import pytest
import torch

from minift.align.contrastive import ContrastiveConfig, embed_sentences, train_contrastive
from minift.align.distill import DistillConfig, train_student, with_teacher_logits
from minift.align.dpo import DPOConfig, train_dpo
from minift.align.multitask import Column, Stage, example_loss, run_stages
from minift.align.ppo import PPOConfig, frozen_copy, train_ppo
from minift.align.reward import RewardConfig, RewardModel, train_reward_model
from minift.align.sft import SFTConfig, train_sft
from minift.checkpoint import load_model, load_trainable, save_model, save_trainable
from minift.distributed import gpus_for_every_rank, init_from_env, sum_over_ranks, rank_device
from minift.evals import best_threshold, evaluate_preferences, evaluate_reward_model, threshold_accuracy
from minift.model import GPTConfig
from minift.tasks import SFTDataset, collate, collate_fn
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.core

CFG = GPTConfig(vocab_size=24, block_size=24, n_layer=1, n_head=2, n_embd=8)
TOK = CharTok()
PREFS = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in
         [("ab", "cd", "dc"), ("ba", "dd", "cc"), ("aab", "cdc", "e"), ("f", "abc", "cba")]]
PAIRS = [("ab", "cd"), ("ba", "dc"), ("f", "abc"), ("ee", "fa"), ("cab", "b"), ("d", "ef")]


def _tc(steps=3, batch_size=2):
    return TrainConfig(steps=steps, batch_size=batch_size, lr=1e-2, warmup_steps=0, progress=False)


# ---- the runs: each takes a model (on some device, in some dtype), trains it a few steps and returns
# (the numbers it measured, the module that trained). Every random draw in them is a CPU draw (the
# samplers' generators, the reward head's init, PPO's sampling), so a CPU and a GPU run draw alike.

def run_reward(model):
    rm, hist = train_reward_model(model, PREFS, RewardConfig(), _tc(), tok=TOK)
    m = evaluate_reward_model(rm, TOK, PREFS)
    return [h["loss"] for h in hist] + [m["margin"]], rm


def run_ppo(model):
    torch.manual_seed(1)                                                # the reward head: a CPU draw
    rm = RewardModel(copy.deepcopy(model)).eval()
    cfg = PPOConfig(steps=2, batch_size=4, minibatch_size=2, max_new_tokens=4, ppo_epochs=1, lr=1e-2)
    hist = train_ppo(model, ["ab", "cd", "ef", "ba", "dc"], cfg, ref=frozen_copy(model), reward_model=rm, tok=TOK,
                     progress=False)
    return [h[k] for h in hist for k in ("score", "kl", "policy_loss", "value_loss")], model


def _run_dpo(model, cfg):
    ref = frozen_copy(model)
    hist = train_dpo(model, PREFS, cfg, _tc(), ref=ref, tok=TOK)
    m = evaluate_preferences(model, ref, TOK, PREFS)
    return [h["loss"] for h in hist] + [m["margin"]], model


def run_dpo(model):                                                     # log π_ref every step
    return _run_dpo(model, DPOConfig(beta=0.5, precompute_ref=False))


def run_ipo(model):                                                     # log π_ref once, before training
    return _run_dpo(model, DPOConfig(beta=0.5, loss_type="ipo"))


def run_contrastive(model):
    items = [{"anchor": w, "positive": w.upper()} for w in ("ab", "cd", "ef", "gh")]
    cfg = ContrastiveConfig(temperature=0.1, dropout=0.0)               # dropout draws on the model's device
    hist = train_contrastive(model, items, cfg, _tc(batch_size=4), tok=TOK)
    e = embed_sentences(model, TOK, ["ab", "ba", "cd"])                 # (3, C)
    return [h["loss"] for h in hist] + e.sum(1).tolist(), model


def run_distill(model):
    teacher = copy.deepcopy(model)
    with torch.no_grad():                                               # a teacher that differs from the student
        for p in teacher.parameters():
            p.mul_(1.5)
    data = SFTDataset(TOK, PAIRS, CFG.block_size)
    coll = collate_fn(TOK.pad_id)
    hist = train_student(model, list(data), DistillConfig(alpha=0.5, temperature=2.0), _tc(), teacher=teacher,
                         collate_fn=coll)
    cached = with_teacher_logits(teacher, list(data)[:3], coll)         # offline: kept on the CPU
    assert all(it["teacher_logits"].device.type == "cpu" for it in cached)
    return [h["loss"] for h in hist], model


def run_sft(model):
    hist = train_sft(model, PAIRS, SFTConfig(), _tc(), tok=TOK)
    return [h["loss"] for h in hist], model


def run_multitask(model):
    a, b = SFTDataset(TOK, PAIRS[:3], CFG.block_size), SFTDataset(TOK, PAIRS[3:], CFG.block_size)
    coll = collate_fn(TOK.pad_id)

    def nll(data):
        def fn(m):
            with torch.no_grad():
                return example_loss(m, coll(list(data)))[0].item()
        return fn

    cols = {k: Column(nll(d), stage=k, higher_is_better=False) for k, d in (("a", a), ("b", b))}
    run = run_stages(model, [Stage("a", a, steps=2, lr=1e-2), Stage("b", b, steps=2, lr=1e-2)], cols, batch_size=2,
                     replay=0.5, collate_fn=coll, progress=False)
    return [sc[k] for sc in run["scores"] for k in ("a", "b")], model


RUNS = {"reward": run_reward, "ppo": run_ppo, "dpo": run_dpo, "ipo": run_ipo, "contrastive": run_contrastive,
        "distill": run_distill, "sft": run_sft, "multitask": run_multitask}


# ---- dtype-following on the CPU ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_trainer_keeps_a_float64_model_float64(name):
    model = tiny_model(CFG)                                             # float64, every weight random
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    numbers, trained = RUNS[name](model)
    assert numbers and all(math.isfinite(x) for x in numbers), numbers
    trainable = [(n, p) for n, p in trained.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float64 for _, p in trainable), \
        sorted({str(p.dtype) for _, p in trainable})
    body = trained.body if hasattr(trained, "body") else trained          # the reward model trains a copy
    moved = [n for n, p in body.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved, f"{name}: no weight moved; the run trained nothing"


# ---- CUDA equals CPU ----------------------------------------------------------------------------

# Tolerances (relative, on losses of order 1). The runs are float64 from one init, and every random
# draw is made on the CPU, so the two devices differ only in the order of floating-point sums
# (cuBLAS, atomics in the embedding backward): about 1e-16 per operation, a few thousand operations,
# a few Adam steps (whose update g / (|g| + eps) amplifies an absolute error in g by at most
# 1 / (4 eps) when |g| ~ eps: 1e-16 -> 2.5e-9, times lr 1e-2). 1e-7 is far above that and far
# below any real difference (a missed mask, another sample, a dropped term moves a loss by > 1e-3).
# One run passes through float32 by contract: the reward run's held-out margin comes from
# reward_metrics (float32). Float64 values one rounding apart can land on neighbouring float32
# values (1 ulp: up to 1.2e-7 relative) and a float32 mean sums in another order on the GPU, so
# that run gets 1e-5. (DPO and IPO score with sequence_logps, float64 for a float64 model.) PPO samples its responses:
# both devices draw them from the same CPU generator over probabilities equal to ~1e-15, so they
# draw the same tokens.
RTOL = {"reward": 1e-5}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_trainer_gives_the_same_losses_on_cuda_as_on_the_cpu(name, cuda_device):
    cpu_numbers, cpu_model = RUNS[name](tiny_model(CFG))
    gpu_numbers, gpu_model = RUNS[name](tiny_model(CFG).to(cuda_device))
    assert all(p.device.type == "cuda" for p in gpu_model.parameters())
    rtol = RTOL.get(name, 1e-7)
    assert gpu_numbers == pytest.approx(cpu_numbers, rel=rtol, abs=1e-9)
    for (n, a), (_, b) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
        torch.testing.assert_close(b.cpu(), a, rtol=100 * rtol, atol=1e-8, msg=f"{name}: {n}")


# ---- data, evaluations, checkpoints, distributed: on every device -------------------------------

def test_collate_makes_the_batch_where_the_items_are(device):
    items = [{"idx": torch.tensor([5, 6, 7], device=device), "targets": torch.tensor([6, 7, 1], device=device),
              "labels": torch.tensor([0, 1, 2], device=device)},
             {"idx": torch.tensor([8], device=device), "targets": torch.tensor([1], device=device),
              "labels": torch.tensor([1], device=device)}]
    b = collate(items, pad_id=0)
    assert {t.device.type for t in b.values()} == {device.type}
    assert b["idx"].tolist() == [[5, 6, 7], [8, 0, 0]] and b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[0, 1, 2], [1, -100, -100]]


def test_thresholds_take_scores_on_any_device_and_labels_as_lists(device):
    s = torch.tensor([0.1, 0.9, 0.4, 0.8], device=device)
    t, acc = best_threshold(s, [0, 1, 0, 1])
    assert acc == 1.0 and 0.4 <= t < 0.8
    assert threshold_accuracy(s, [0, 1, 0, 1], 0.5) == 1.0 and threshold_accuracy(s, [1, 1, 1, 1], 0.5) == 0.5


def test_checkpoints_load_onto_the_device_asked_for(tmp_path, device):
    model = tiny_model(CFG, dtype=torch.float32)
    save_model(model, str(tmp_path / "m"))
    got = load_model(str(tmp_path / "m"), map_location=device)
    assert all(p.device.type == device.type for p in got.parameters())
    for a, b in zip(model.parameters(), got.parameters()):
        assert torch.equal(a, b.cpu())
    save_trainable(model, str(tmp_path / "t.safetensors"))
    with torch.no_grad():
        for p in got.parameters():
            p.zero_()
    load_trainable(got, str(tmp_path / "t.safetensors"))              # CPU file -> the model's device
    assert all(p.device.type == device.type for p in got.parameters())
    assert all(torch.equal(a, b.cpu()) for a, b in zip(model.parameters(), got.parameters()))
    with pytest.raises(ValueError, match="map_location='gpu0'"):
        load_model(str(tmp_path / "m"), map_location="gpu0")


def test_data_parallel_picks_nccl_only_with_a_gpu_per_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for local_size, local_rank, want in ((2, 1, True), (1, 0, True), (4, 1, False), (3, 2, False)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_size))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        assert gpus_for_every_rank() is want, (local_size, local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not gpus_for_every_rank()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="one GPU per rank"):          # before any process group is made
        init_from_env("nccl")
    assert rank_device() == torch.device("cpu") and sum_over_ranks(2.5) == 2.5   # no process group: cpu
