"""Planted bugs for lesson 15 (DPO): buggy copies of the reference `run_*` functions, one plausible
learner mistake each, named run_<fn>__<bug>. tests/test_planted.py swaps each into the reference and
asserts that the checks of run_<fn> catch it."""
import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


# ---- run_dpo_loss --------------------------------------------------------------------------------

def run_dpo_loss__naive_log_sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                    beta, loss_type="sigmoid", label_smoothing=0.0):
    """writes −log σ(βh) as log(sigmoid(·)): inf for large negative margins."""
    if loss_type != "sigmoid":
        return ref.run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                                loss_type, label_smoothing)
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    eps = label_smoothing
    return -(1 - eps) * torch.log(torch.sigmoid(beta * h)) - eps * torch.log(torch.sigmoid(-beta * h))


def run_dpo_loss__no_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                          loss_type="sigmoid", label_smoothing=0.0):
    """forgets β inside the sigmoid loss (β = 1 always)."""
    if loss_type != "sigmoid":
        return ref.run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                                loss_type, label_smoothing)
    return ref.run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 1.0,
                            loss_type, label_smoothing)


def run_dpo_loss__swapped_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                    beta, loss_type="sigmoid", label_smoothing=0.0):
    """pairs each policy log-prob with the other side's reference log-prob."""
    return ref.run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_rejected_logps, ref_chosen_logps, beta,
                            loss_type, label_smoothing)


def run_dpo_loss__ipo_without_half(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                   beta, loss_type="sigmoid", label_smoothing=0.0):
    """IPO's target 1/β instead of 1/(2β)."""
    if loss_type != "ipo":
        return ref.run_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
                                loss_type, label_smoothing)
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1 / beta) ** 2


# ---- run_dpo_rewards -----------------------------------------------------------------------------

def run_dpo_rewards__no_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """returns the log-ratios without the factor β."""
    return ref.run_dpo_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 1.0)


def run_dpo_rewards__margin_rows(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """stacks the policy's log-prob difference and the reference's instead of each side's log-ratio."""
    return beta * torch.stack([policy_chosen_logps - policy_rejected_logps, ref_chosen_logps - ref_rejected_logps])


# ---- run_response_logps --------------------------------------------------------------------------

def _per_token(logits, input_ids):
    return F.log_softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None].long())[..., 0]   # (B, T−1)


def run_response_logps__no_shift(logits, input_ids, response_mask):
    """reads token t's log-prob from the logits at t, not t − 1."""
    lp = F.log_softmax(logits.float(), -1).gather(-1, input_ids[..., None].long())[..., 0]
    return torch.where(response_mask.bool(), lp, 0.0).sum(-1)


def run_response_logps__mean_not_sum(logits, input_ids, response_mask):
    """averages the response tokens' log-probs instead of summing them."""
    return ref.run_response_logps(logits, input_ids, response_mask) / response_mask.sum(-1)


def run_response_logps__prompt_included(logits, input_ids, response_mask):
    """scores every real token after the first (prompt included), not the response only."""
    lp = _per_token(logits, input_ids)
    first = response_mask.float().argmax(-1)                                   # the response's first column
    cols = torch.arange(1, input_ids.shape[1])[None]
    keep = (cols < first[:, None]) | response_mask[:, 1:].bool()              # prompt columns 1 .. and the response
    return torch.where(keep, lp, 0.0).sum(-1)


def run_response_logps__mask_multiplied(logits, input_ids, response_mask):
    """multiplies by the mask instead of selecting: a NaN at an unscored position gives NaN."""
    return (_per_token(logits, input_ids) * response_mask[:, 1:]).sum(-1)


def run_response_logps__mask_not_shifted(logits, input_ids, response_mask):
    """shifts the logits but not the mask: scores positions t − 1 where m_{t−1} = 1."""
    return torch.where(response_mask[:, :-1].bool(), _per_token(logits, input_ids), 0.0).sum(-1)


def run_response_logps__low_precision(logits, input_ids, response_mask):
    """takes the log-softmax in the logits' own dtype (bfloat16 loses 2-3 digits)."""
    lp = F.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None].long())[..., 0]
    return torch.where(response_mask[:, 1:].bool(), lp, torch.zeros((), dtype=lp.dtype)).sum(-1)


def run_response_logps__detached(logits, input_ids, response_mask):
    """computes the log-probs from detached logits: no gradient reaches the model."""
    return ref.run_response_logps(logits.detach(), input_ids, response_mask)


# ---- run_dpo_step --------------------------------------------------------------------------------

def _seq_logps(model, batch, grad=True):
    with torch.set_grad_enabled(grad):
        z = model(batch["ids"], attention_mask=batch["attention_mask"]).logits
        return ref.run_response_logps(z, batch["ids"], batch["response_mask"])


def _dpo_loss(lp, rlp, B, beta):
    return ref.run_dpo_loss(lp[:B], lp[B:], rlp[:B], rlp[B:], beta).mean()


def _sgd(policy, loss, lr):
    params = [p for p in policy.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        with torch.no_grad():
            p.sub_(lr * g)


def run_dpo_step__reference_with_grad(policy, ref_model, batch, beta, lr):
    """scores the reference with gradients on and backpropagates into it (the reference's .grad fills)."""
    B = batch["n_pairs"]
    loss = _dpo_loss(_seq_logps(policy, batch), _seq_logps(ref_model, batch), B, beta)
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def run_dpo_step__stale_grad(policy, ref_model, batch, beta, lr):
    """never zeroes the policy's gradients: a stale .grad is added to this batch's."""
    B = batch["n_pairs"]
    loss = _dpo_loss(_seq_logps(policy, batch), _seq_logps(ref_model, batch, grad=False), B, beta)
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=lr).step()
    return loss.detach()


def run_dpo_step__average_logps(policy, ref_model, batch, beta, lr):
    """averages the log-probs over the response tokens (IPO's normalisation) instead of summing."""
    B, n = batch["n_pairs"], batch["response_mask"].sum(-1)
    loss = _dpo_loss(_seq_logps(policy, batch) / n, _seq_logps(ref_model, batch, grad=False) / n, B, beta)
    _sgd(policy, loss, lr)
    return loss.detach()


def run_dpo_step__sides_swapped(policy, ref_model, batch, beta, lr):
    """takes rows [:B] as the rejected answers and rows [B:] as the chosen ones."""
    B = batch["n_pairs"]
    lp, rlp = _seq_logps(policy, batch), _seq_logps(ref_model, batch, grad=False)
    loss = ref.run_dpo_loss(lp[B:], lp[:B], rlp[B:], rlp[:B], beta).mean()
    _sgd(policy, loss, lr)
    return loss.detach()


def run_dpo_step__ascent(policy, ref_model, batch, beta, lr):
    """steps up the gradient (θ + lr ∇L) instead of down."""
    return ref.run_dpo_step(policy, ref_model, batch, beta, -lr)


def run_dpo_step__loss_after_step(policy, ref_model, batch, beta, lr):
    """returns the loss recomputed after the step, not the one the step descended."""
    ref.run_dpo_step(policy, ref_model, batch, beta, lr)
    B = batch["n_pairs"]
    with torch.no_grad():
        return _dpo_loss(_seq_logps(policy, batch, False), _seq_logps(ref_model, batch, False), B, beta)


# ---- run_rank_pairs ------------------------------------------------------------------------------

def _bw(s):
    return s.index(max(s)), max(i for i in range(len(s)) if s[i] == min(s))


def run_rank_pairs__last_top_first_bottom(prompts, responses, scores, pairs="best_worst", margin=0.0):
    """breaks ties the other way: the LAST highest-scoring answer over the FIRST lowest-scoring one."""
    if pairs != "best_worst":
        return ref.run_rank_pairs(prompts, responses, scores, pairs, margin)
    out = []
    for x, y, s in zip(prompts, responses, scores):
        j = max(i for i in range(len(s)) if s[i] == max(s))
        l = s.index(min(s))
        if s[j] - s[l] > margin and y[j] != y[l]:
            out.append({"prompt": x, "chosen": y[j], "rejected": y[l], "margin": s[j] - s[l]})
    return out


def run_rank_pairs__margin_inclusive(prompts, responses, scores, pairs="best_worst", margin=0.0):
    """keeps a pair whose gap EQUALS the margin (>= instead of >): at margin 0, tied answers become pairs."""
    out = []
    for x, y, s in zip(prompts, responses, scores):
        cand = [_bw(s)] if pairs == "best_worst" else [(j, l) for j in range(len(s)) for l in range(len(s)) if j != l]
        out += [{"prompt": x, "chosen": y[j], "rejected": y[l], "margin": s[j] - s[l]}
                for j, l in cand if s[j] - s[l] >= margin and y[j] != y[l]]
    return out


def run_rank_pairs__same_text_kept(prompts, responses, scores, pairs="best_worst", margin=0.0):
    """never drops a pair whose chosen and rejected answers are the same text."""
    out = []
    for x, y, s in zip(prompts, responses, scores):
        cand = [_bw(s)] if pairs == "best_worst" else [(j, l) for j in range(len(s)) for l in range(len(s))]
        out += [{"prompt": x, "chosen": y[j], "rejected": y[l], "margin": s[j] - s[l]}
                for j, l in cand if s[j] - s[l] > margin]
    return out


def run_rank_pairs__best_worst_global(prompts, responses, scores, pairs="best_worst", margin=0.0):
    """'all' falls back to one best-worst pair per prompt (misses the middle answers' pairs)."""
    return ref.run_rank_pairs(prompts, responses, scores, "best_worst", margin)
