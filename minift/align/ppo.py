"""RLHF with PPO: make the policy's samples score higher under a reward model, on a leash to π_SFT.

RLHF's step 3 (Ziegler et al., 2019; Stiennon et al., 2020; Ouyang et al., 2022). The policy π_θ
starts as the SFT model; a frozen copy is the reference π_ref. For a prompt x, a response
y = (y_1 .. y_n) is SAMPLED from π_θ at temperature 1 with no top-k/top-p (anything else would be
a different policy from the one whose log-probs are optimised), and every token gets a reward

    r_t = −β (log π_θ(y_t | s_t) − log π_ref(y_t | s_t))  +  [t = n] r_φ(x, y)      s_t = (x, y_<t)

i.e. the per-token KL penalty (estimator k1 = log-ratio of the sampled token, whose expectation is
KL(π_θ ‖ π_ref)) plus the reward model's score on the last real response token. β is fixed, or
adaptive (Ziegler et al.): β ← β (1 + clip(KL / KL_target − 1, ±0.2) · B / horizon).

A value head V(s_t) (a linear layer on the policy's final hidden state, DETACHED: it learns from
the policy's features but never moves them) gives advantages by GAE (Schulman et al., 2016):

    δ_t = r_t + γ V(s_{t+1}) − V(s_t)        A_t = Σ_k (γλ)^k δ_{t+k}        R_t = A_t + V(s_t)

with V = 0 after the last token. λ = 1 gives A_t = (discounted return) − V(s_t); λ = 0 the TD
residual δ_t. The advantages are whitened over the batch's real tokens. Then several epochs of
minibatches maximise PPO's clipped objective (Schulman et al., 2017), ρ_t = π_θ / π_θ_old:

    L_π = −mean_t min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε) A_t)
    L_V = ½ mean_t max((V − R_t)², (V_old + clip(V − V_old, ±ε_V) − R_t)²)

Shapes: prompts are left-padded to P columns so every response starts at column P; the response
tensors are (B, N), N <= max_new_tokens, with mask (B, N) = 1 on the response's real tokens (up to
and including EOS). Every mean above is over those real tokens; so are the logged statistics.
The policy runs with dropout off, so before the first update ρ = 1 exactly.

Devices: the rollout runs where the policy is (prompts, masks and responses are moved there; the
reference and the reward model each score on their own device); the value head is made on the
policy's device and dtype. Tokens are drawn with the CPU generator the loop seeds (the
probabilities are copied to it), so a CUDA run samples the same responses as a CPU run as long as
the two compute the same probabilities to float32 rounding.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model import GPT, at_least_fp32
from ..peft.common import adapter_layers, disable_adapters
from ..tasks import collate
from ..train import TrainConfig, make_optimizer, model_device, to_device
from ..validate import check_bool, check_float, check_int
from .logps import check_01, check_finite, masked_mean, zero_masked


@dataclass
class PPOConfig:
    steps: int = 30                  # PPO iterations: one rollout batch + its updates each
    batch_size: int = 32             # prompts (= sampled responses) per rollout
    max_new_tokens: int = 24
    ppo_epochs: int = 4              # passes over each rollout batch
    minibatch_size: int = 16         # rows per gradient step
    lr: float = 1e-5
    clip: float = 0.2                # ε of the policy ratio
    clip_value: float = 0.2          # ε_V of the value update
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.1             # β (the initial one if target_kl is set)
    target_kl: Optional[float] = None   # nats per response; None: β stays fixed
    horizon: int = 10000
    whiten: bool = True
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size", "horizon"):
            check_int(self, name, getattr(self, name), lo=1)
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"PPOConfig.minibatch_size={self.minibatch_size} must be <= batch_size={self.batch_size}")
        for name in ("lr", "clip", "clip_value"):
            check_float(self, name, getattr(self, name), lo=0, lo_open=True)
        for name in ("gamma", "lam"):
            check_float(self, name, getattr(self, name), 0, 1)
        for name in ("vf_coef", "kl_coef", "grad_clip"):
            check_float(self, name, getattr(self, name), lo=0)
        check_float(self, "target_kl", self.target_kl, lo=0, lo_open=True, optional=True, hint=" (None: fixed β)")
        check_bool(self, "whiten", self.whiten)
        check_int(self, "seed", self.seed, lo=0)


# ---- the pure pieces (what the conformance run_* functions wrap) ------------------------------

def _check_same(who, mask, **tensors):
    """Every tensor floating point, of mask's shape (B, N), finite where mask is 1; mask 0/1, not empty."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.shape != mask.shape:
            raise ValueError(f"{name} must have the shape of mask {tuple(mask.shape)}, got {tuple(t.shape)}")
    if mask.dim() != 2:
        raise ValueError(f"mask must be (batch, tokens), got {tuple(mask.shape)}")
    check_01(mask)
    if not bool(mask.bool().any()):
        raise ValueError("mask has no real token: there is nothing to average over")
    for name, t in tensors.items():
        check_finite(name, t, mask, who)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − μ) / sqrt(σ² + eps), μ and σ² (biased) over the real tokens; 0 on padding. (B, N) -> (B, N).
    Padding may hold anything (it is selected out first); x must be finite on the real tokens."""
    _check_same("whiten", mask, x=x)
    x = zero_masked(x, mask)                                               # padding: 0, whatever it held
    mu = masked_mean(x, mask)                                              # μ over real tokens
    var = masked_mean((x - mu) ** 2, mask)                                 # σ² (biased)
    return zero_masked((x - mu) * torch.rsqrt(var + eps), mask)            # (B, N), 0 on padding


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π(y_t) − log π_ref(y_t) per sampled token, (B, N) -> (B, N); E_π[k1] = KL(π ‖ π_ref)."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have one shape")
    return logp - ref_logp


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the real tokens of each row (a contiguous run of 1s):
    (advantages A, returns R = A + V), both (B, N) and 0 on padding. A reverse recursion over
    the N <= max_new_tokens response positions, as in every PPO implementation."""
    _check_same("gae", mask, rewards=rewards, values=values)
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma={gamma} and lam={lam} must be in [0, 1]")
    keep = mask.bool()                                                     # (B, N) real tokens
    rewards, values = zero_masked(rewards, mask), zero_masked(values, mask)   # padding: 0, whatever it held
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])                              # A_{t+1}, (B,)
    N = rewards.shape[1]
    for t in reversed(range(N)):
        v_next = values[:, t + 1] if t + 1 < N else torch.zeros_like(running)  # V = 0 after the end
        delta = rewards[:, t] + gamma * v_next - values[:, t]             # δ_t = r_t + γ V_{t+1} − V_t
        running = torch.where(keep[:, t], delta + gamma * lam * running, 0.0)  # A_t = δ_t + γλ A_{t+1}
        adv[:, t] = running
    return adv, zero_masked(adv + values, mask)                            # R_t = A_t + V_t


def _clipped_inputs(who: str, mask: torch.Tensor, clip: float, **tensors) -> tuple:
    """What both clipped losses check (_check_same, clip > 0), then their inputs with padding selected
    out: no value, no gradient."""
    _check_same(who, mask, **tensors)
    if not clip > 0:
        raise ValueError(f"clip={clip!r} must be > 0")
    return tuple(zero_masked(t, mask) for t in tensors.values())


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> torch.Tensor:
    """L = −mean_t min(ρ A, clip(ρ, 1−ε, 1+ε) A), ρ = exp(logp − old_logp); (B, N) each -> scalar."""
    logp, old_logp, adv = _clipped_inputs("ppo_policy_loss", mask, clip, logp=logp, old_logp=old_logp, adv=adv)
    ratio = torch.exp(logp - old_logp)                                     # ρ_t  (B, N)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    return masked_mean(-torch.min(unclipped, clipped), mask)


def ppo_value_loss(v: torch.Tensor, old_v: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip: float = 0.2) -> torch.Tensor:
    """L_V = ½ mean_t max((v − R)², (v_old + clip(v − v_old, ±ε_V) − R)²); (B, N) each -> scalar."""
    v, old_v, returns = _clipped_inputs("ppo_value_loss", mask, clip, v=v, old_v=old_v, returns=returns)
    v_clipped = old_v + torch.clamp(v - old_v, -clip, clip)
    return 0.5 * masked_mean(torch.max((v - returns) ** 2, (v_clipped - returns) ** 2), mask)


# ---- rollouts ---------------------------------------------------------------------------------

def encode_prompts(tok, prompts: Sequence[str], block_size: int, max_new_tokens: int) -> dict:
    """<|prompt|> x <|response|> for each prompt, left-padded: {"ids", "attention_mask"} (B, P).
    Prompts longer than block_size − max_new_tokens lose their oldest tokens (the first is kept)."""
    limit = block_size - max_new_tokens
    if limit < 2:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in block_size={block_size}")
    enc = [tok.encode_prompt(p) for p in prompts]
    enc = [e if len(e) <= limit else e[:1] + e[len(e) - limit + 1:] for e in enc]
    b = collate([{"idx": e} for e in enc], tok.pad_id, side="left")
    return {"ids": b["idx"], "attention_mask": b["attention_mask"]}


@torch.no_grad()
def sample(policy: GPT, ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_id: int,
           pad_id: int, generator: Optional[torch.Generator] = None, greedy: bool = False):
    """Sample responses from exactly softmax(logits) (temperature 1, no filtering; greedy=True: argmax),
    with the KV cache. ids, attention_mask: (B, P) left-padded prompts. Returns (tokens, mask,
    logps), each (B, N) on the policy's device: the response, 1 on its real tokens (through EOS), and
    the log-probability each token had when it was drawn (0 on padding). A generator draws on its own
    device (a CPU generator: the probabilities go to the CPU for the draw, the tokens come back), so
    the same generator gives the same tokens whichever device the policy is on."""
    dev = model_device(policy)
    ids, attention_mask = to_device((ids, attention_mask), dev)
    B = ids.shape[0]
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    toks, masks, logps = [], [], []
    past, step_in, mask = None, ids, attention_mask.to(torch.long)
    for _ in range(max_new_tokens):
        out = policy(step_in, attention_mask=mask, past_kv=past, use_cache=True)
        past = out.past_kv
        logp = F.log_softmax(at_least_fp32(out.logits[:, -1]), dim=-1)     # (B, V): what is sampled from
        if greedy:
            nxt = logp.argmax(-1)                                          # (B,)
        else:                                                              # y_t ~ softmax, on the generator's device
            probs = logp.exp() if generator is None else logp.exp().to(generator.device)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(dev)   # (B,)
        alive = ~done                                                      # (B,) this token is real
        toks.append(torch.where(alive, nxt, torch.full_like(nxt, pad_id)))
        logps.append(torch.where(alive, logp.gather(1, nxt[:, None]).squeeze(1), 0.0))
        masks.append(alive.to(torch.long))
        done = done | (nxt == eos_id)
        if bool(done.all()):
            break
        step_in = toks[-1][:, None]                                        # (B, 1)
        mask = torch.cat([mask, masks[-1][:, None]], dim=1)                # padding after EOS: mask 0
    return torch.stack(toks, 1), torch.stack(masks, 1), torch.stack(logps, 1)


def response_logits(model: GPT, ids, attention_mask, P: int, hidden: bool = False):
    """One forward over [prompt ; response] (B, P + N): the logits (B, N, V) that predict the
    response tokens (columns P−1 .. P+N−2) and, if asked, the final hidden states there (B, N, C)."""
    ids, attention_mask = to_device((ids, attention_mask), model_device(model))
    out = model(ids, attention_mask=attention_mask, output_hidden_states=hidden)
    logits = at_least_fp32(out.logits[:, P - 1:-1])                        # (B, N, V)
    return (logits, out.hidden_states[-1][:, P - 1:-1]) if hidden else logits


def logps_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)   # (B, N)


@torch.no_grad()
def rollout(policy: GPT, ref: Optional[GPT], reward_model, tok, prompts: Sequence[str], max_new_tokens: int,
            generator: Optional[torch.Generator] = None, value_head: Optional[nn.Module] = None,
            greedy: bool = False) -> dict:
    """Sample one response per prompt and score it: everything PPO (or an evaluation) needs.
    Returns tensors "ids", "attention_mask" (B, P + N), "tokens", "mask", "logp" (re-scored),
    "sample_logp" (at sampling time), "ref_logp", "entropy" (B, N), "score" (B,), "values" (B, N)
    if a value head is given, and "P"; every tensor on the policy's device. ref=None: π_ref is the
    policy with its adapters disabled (a PEFT policy: no second copy of the model in memory)."""
    policy.eval()
    dev = model_device(policy)
    p = to_device(encode_prompts(tok, prompts, policy.config.block_size, max_new_tokens), dev)
    P = p["ids"].shape[1]
    tokens, mask, sample_logp = sample(policy, p["ids"], p["attention_mask"], max_new_tokens, tok.eos_id,
                                       tok.pad_id, generator, greedy)
    ids = torch.cat([p["ids"], tokens], 1)                                 # (B, P + N)
    attn = torch.cat([p["attention_mask"], mask], 1)
    logits, h = response_logits(policy, ids, attn, P, hidden=True)         # (B, N, V), (B, N, C)
    logp = zero_masked(logps_of(logits, tokens), mask)                     # the same numbers, re-scored
    ent = -(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1)     # H(π(·|s_t))  (B, N)
    if ref is None:                                                        # π_ref = the base under the adapters
        with disable_adapters(policy):
            ref_logits = response_logits(policy, ids, attn, P)
    else:
        ref_logits = response_logits(ref, ids, attn, P).to(dev)            # π_ref on its device, back here
    ref_logp = zero_masked(logps_of(ref_logits, tokens), mask)
    rm_dev = model_device(reward_model) if isinstance(reward_model, nn.Module) else dev   # any scorer works
    score = reward_model(ids.to(rm_dev), attention_mask=attn.to(rm_dev))    # r_φ at the last real token  (B,)
    out = {"ids": ids, "attention_mask": attn, "tokens": tokens, "mask": mask, "logp": logp, "P": P,
           "sample_logp": sample_logp, "ref_logp": ref_logp, "entropy": ent,
           "score": at_least_fp32(score).to(dev)}
    if value_head is not None:
        out["values"] = zero_masked(value_head(h).squeeze(-1), mask)       # V(s_t)  (B, N)
    return out


def decode_responses(tok, r: dict) -> list[str]:
    return [tok.decode([t for t, m in zip(row, mrow) if m and t != tok.eos_id]).strip()
            for row, mrow in zip(r["tokens"].tolist(), r["mask"].tolist())]


# ---- the loop ---------------------------------------------------------------------------------
# PPO does not run minift.train.train: an iteration is a fresh rollout (sampled by the policy being
# trained, so there is no fixed dataset to draw batches from) followed by several epochs of
# minibatch updates on it, at a constant lr. It shares the optimizer (train.make_optimizer) and the
# shape of every trainer's call: train_ppo(policy, prompts, cfg, *, ref=..., reward_model=..., tok=...).

def token_rewards(r: dict, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β k1_t on every response token, plus r_φ(x, y) on the last real one, for a rollout r:
    (rewards, k1), both (B, N) and 0 on padding."""
    mask = r["mask"]
    kl = zero_masked(kl_penalty(r["logp"], r["ref_logp"]), mask)       # k1 per token  (B, N)
    rewards = -beta * kl                                               # −β KL on every token
    last = mask.sum(1) - 1                                             # last real response token
    rewards[torch.arange(len(last), device=mask.device), last] += r["score"]   # + r_φ(x, y) there
    return rewards, kl


def _update(policy: GPT, value_head: nn.Module, opt, params: list, r: dict, adv: torch.Tensor,
            returns: torch.Tensor, cfg: "PPOConfig", gen: torch.Generator) -> dict:
    """cfg.ppo_epochs epochs of minibatch steps on one rollout batch; the mean statistics."""
    mask, P = r["mask"], r["P"]
    stats = {"policy_loss": 0.0, "value_loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0}
    n_updates = 0
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(cfg.batch_size, generator=gen, device=gen.device)   # the CPU generator's draw
        for s in range(0, cfg.batch_size, cfg.minibatch_size):
            mb = perm[s:s + cfg.minibatch_size].to(mask.device)           # ... then moved to the rollout
            logits, h = response_logits(policy, r["ids"][mb], r["attention_mask"][mb], P, hidden=True)
            logp = logps_of(logits, r["tokens"][mb])                   # (b, N)
            v = value_head(h.detach()).squeeze(-1)                     # the critic never moves π
            mm = mask[mb]
            pl = ppo_policy_loss(logp, r["logp"][mb], adv[mb], mm, cfg.clip)
            vl = ppo_value_loss(v, r["values"][mb], returns[mb], mm, cfg.clip_value)
            opt.zero_grad(set_to_none=True)
            (pl + cfg.vf_coef * vl).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                lr_ = logp - r["logp"][mb]
                stats["policy_loss"] += pl.item()
                stats["value_loss"] += vl.item()
                stats["clip_frac"] += masked_mean(((lr_.exp() - 1).abs() > cfg.clip).float(), mm).item()
                stats["approx_kl"] += masked_mean(-lr_, mm).item()     # KL(π_old ‖ π_new), k1
            n_updates += 1
    return {k: v / n_updates for k, v in stats.items()}


def train_ppo(policy: GPT, prompts: Sequence[str], cfg: PPOConfig, *, ref: Optional[GPT], reward_model, tok,
              value_head: Optional[nn.Module] = None, progress: bool = True) -> list[dict]:
    """PPO-RLHF on `policy` IN PLACE (whatever requires_grad: full fine-tuning, or LoRA after
    minift.peft.apply_lora). `ref` and `reward_model` are frozen here; ref=None takes a PEFT policy's
    disabled adapters as π_ref (as train_dpo does), which saves the reference copy's memory. Each iteration draws
    cfg.batch_size prompts (without replacement, reshuffled each pass), samples, scores, then runs
    cfg.ppo_epochs epochs of minibatches. The value head is a fresh nn.Linear(C, 1), zero-initialised,
    unless one is passed (pass one to keep it), on the policy's device and in its dtype. Returns one
    dict of statistics per iteration."""
    if not isinstance(cfg, PPOConfig):
        raise TypeError(f"cfg must be a PPOConfig, got {type(cfg).__name__}")
    if not isinstance(policy, GPT) or not (ref is None or isinstance(ref, GPT)):
        raise TypeError("policy and ref must be minift GPTs (ref=None: a PEFT policy's disabled adapters)")
    if policy is ref:
        raise ValueError("ref must be a separate frozen copy of the policy (copy.deepcopy(policy)), not the policy")
    if ref is None and not any(True for _ in adapter_layers(policy)):
        raise ValueError("train_ppo: ref=None needs a PEFT policy (e.g. apply_lora) whose disabled adapters "
                         "give the reference; this policy has no adapter layer")
    if len(prompts) < cfg.batch_size:
        raise ValueError(f"{len(prompts)} prompts are fewer than PPOConfig.batch_size={cfg.batch_size}")
    torch.manual_seed(cfg.seed)
    if value_head is None:                                             # V(s) = w·h + b on the policy's h
        value_head = nn.Linear(policy.config.n_embd, 1, device="cpu")  # its default init draws on the CPU RNG
        nn.init.zeros_(value_head.weight)                              # on every device alike, then V = 0
        nn.init.zeros_(value_head.bias)
        w = policy.transformer.wte.weight
        value_head = value_head.to(device=w.device, dtype=w.dtype)
    for m in [x for x in (ref, reward_model) if isinstance(x, nn.Module)]:   # a reward may be a plain function
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    if not any(p.requires_grad for p in policy.parameters()):
        raise ValueError("train_ppo: the policy has no trainable parameters (everything is frozen)")
    # the policy's trainable parameters and the value head's: AdamW, betas (0.9, 0.95), no weight decay
    opt = make_optimizer(nn.ModuleList([policy, value_head]), TrainConfig(lr=cfg.lr, weight_decay=0.0))
    params = [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())   # for clipping
    gen = torch.Generator().manual_seed(cfg.seed)                      # CPU: the same draws on every device
    order, pos = torch.randperm(len(prompts), generator=gen, device="cpu").tolist(), 0
    beta, history, t0 = cfg.kl_coef, [], time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="ppo", disable=not progress, leave=False, dynamic_ncols=True)
    for it in bar:
        if pos + cfg.batch_size > len(order):
            order, pos = torch.randperm(len(prompts), generator=gen, device="cpu").tolist(), 0
        batch_prompts = [prompts[i] for i in order[pos:pos + cfg.batch_size]]
        pos += cfg.batch_size
        # ---- 1. rollout: sample, score with π_θ_old, π_ref, r_φ and V; rewards and advantages --------
        r = rollout(policy, ref, reward_model, tok, batch_prompts, cfg.max_new_tokens, gen, value_head)
        mask = r["mask"]
        rewards, kl = token_rewards(r, beta)
        adv, returns = gae(rewards, r["values"], mask, cfg.gamma, cfg.lam)
        if cfg.whiten:
            adv = whiten(adv, mask)
        # ---- 2. several epochs of minibatch updates ------------------------------------------------
        stats = _update(policy, value_head, opt, params, r, adv, returns, cfg, gen)
        seq_kl = float(kl.sum(1).mean())                                   # mean Σ_t k1: nats per response
        rec = {"iter": it + 1, "score": float(r["score"].mean()), "kl": seq_kl, "kl_coef": beta,
               "reward": float((r["score"] - beta * kl.sum(1)).mean()),
               "entropy": float(masked_mean(r["entropy"], mask)), "length": float(mask.float().sum(1).mean()),
               "no_eos": float((~(r["tokens"] == tok.eos_id).any(1)).float().mean()),
               "sample_logp_err": float((r["sample_logp"] - r["logp"]).abs().max()),
               **stats, "time": time.perf_counter() - t0}
        history.append(rec)
        if cfg.target_kl is not None:                                      # Ziegler et al.'s controller
            err = max(-0.2, min(0.2, seq_kl / cfg.target_kl - 1.0))
            beta = beta * (1.0 + err * cfg.batch_size / cfg.horizon)
        bar.set_postfix(score=f"{rec['score']:.2f}", kl=f"{seq_kl:.2f}")
    bar.close()
    policy.eval()
    return history


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with requires_grad off: the reference policy."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


__all__ = ["PPOConfig", "masked_mean", "whiten", "kl_penalty", "gae", "ppo_policy_loss", "ppo_value_loss",
           "encode_prompts", "sample", "response_logits", "rollout", "decode_responses", "token_rewards", "train_ppo",
           "frozen_copy"]
