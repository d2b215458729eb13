"""Planted bugs for lesson 16 (contrastive learning): copies of the reference `run_*` functions,
each with one plausible learner mistake. tests/test_planted.py checks that lesson 16's checks
catch every one. Do not copy from this file."""
import torch
import torch.nn.functional as F

from minift.conformance import reference as ref


def _logits(a, b, tau, negatives, normalise=True):
    if normalise:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
        negatives = None if negatives is None else F.normalize(negatives, dim=-1)
    cands = b if negatives is None else torch.cat([b, negatives])
    return a @ cands.T / tau                                             # (N, N + M)


def run_info_nce__no_normalise(a, b, temperature=0.05, negatives=None, symmetric=False):
    """dot products instead of cosines: the rows are never normalised"""
    logits = _logits(a, b, temperature, negatives, normalise=False)
    target = torch.arange(a.shape[0])
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits[:, :a.shape[0]].T, target))
    return loss


def run_info_nce__times_tau(a, b, temperature=0.05, negatives=None, symmetric=False):
    """multiplies the similarities by τ instead of dividing"""
    return ref.run_info_nce(a, b, 1.0 / temperature, negatives, symmetric)


def run_info_nce__sum_not_mean(a, b, temperature=0.05, negatives=None, symmetric=False):
    """sums ℓ_i over the anchors instead of averaging (a missing 1/N)"""
    return ref.run_info_nce(a, b, temperature, negatives, symmetric) * a.shape[0]


def run_info_nce__wrong_axis(a, b, temperature=0.05, negatives=None, symmetric=False):
    """the softmax runs over the anchors (a column of S) instead of over the candidates (a row)"""
    logits = _logits(a, b, temperature, negatives)                     # (N, N + M)
    target = torch.arange(a.shape[0])
    loss = -torch.log_softmax(logits, dim=0)[target, target].mean()
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits[:, :a.shape[0]].T, target))
    return loss


def run_info_nce__symmetric_no_transpose(a, b, temperature=0.05, negatives=None, symmetric=False):
    """the b -> a direction forgets the transpose: it scores a_i against the b_j again, without negatives"""
    logits = _logits(a, b, temperature, negatives)                     # (N, N + M)
    target = torch.arange(a.shape[0])
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits[:, :a.shape[0]], target))
    return loss


def run_sentence_embedding__mean_over_padding(h, attention_mask, pooling="last"):
    """the mean runs over every position, padding included"""
    if pooling == "mean":
        return h.mean(1)
    return ref.run_sentence_embedding(h, attention_mask, pooling)


def run_sentence_embedding__divides_by_T(h, attention_mask, pooling="last"):
    """the masked sum is divided by T, not by the number of real tokens"""
    if pooling == "mean":
        m = attention_mask.to(h.dtype)
        return (h * m[..., None]).sum(1) / h.shape[1]
    return ref.run_sentence_embedding(h, attention_mask, pooling)


def run_sentence_embedding__last_assumes_right_padding(h, attention_mask, pooling="last"):
    """the last real token taken at index Σ_t m_t − 1, which is right only with right padding"""
    if pooling == "last":
        last = attention_mask.long().sum(1) - 1
        return h[torch.arange(h.shape[0]), last]
    return ref.run_sentence_embedding(h, attention_mask, pooling)


def run_sentence_embedding__last_position(h, attention_mask, pooling="last"):
    """'last' takes position T − 1 whatever the mask (a pad, for right-padded rows)"""
    if pooling == "last":
        return h[:, -1]
    return ref.run_sentence_embedding(h, attention_mask, pooling)


# ---- the assignment: a contrastive training step ---------------------------------------------------

def _pool(h, attention_mask, pooling):
    """the correct pooling of h (B, T, C) over the real tokens"""
    m = attention_mask.to(h.dtype)
    if pooling == "mean":
        return torch.where(m[..., None] == 1, h, torch.zeros_like(h)).sum(1) / m.sum(1, keepdim=True)
    last = (m * torch.arange(h.shape[1], dtype=h.dtype)).argmax(1)          # the largest t with m_t = 1
    return h[torch.arange(h.shape[0]), last]


def run_embed_batch__no_attention_mask(model, idx, attention_mask, pooling="last"):
    """runs the model without the attention mask (pads are attended to, positions count the pads)"""
    h = model(idx, output_hidden_states=True, return_logits=False).hidden_states[-1]
    return _pool(h, attention_mask, pooling)


def run_embed_batch__before_ln_f(model, idx, attention_mask, pooling="last"):
    """pools the last block's output, before the final LayerNorm ln_f"""
    seen = {}
    hook = model.transformer.h[-1].register_forward_hook(lambda mod, inp, out: seen.setdefault("x", out[0]))
    try:
        model(idx, attention_mask=attention_mask, return_logits=False)
    finally:
        hook.remove()
    return _pool(seen["x"], attention_mask, pooling)


def run_embed_batch__no_grad(model, idx, attention_mask, pooling="last"):
    """runs the model under torch.no_grad(), so nothing can train through the embeddings"""
    with torch.no_grad():
        return ref.run_embed_batch(model, idx, attention_mask, pooling)


def run_embed_batch__last_column(model, idx, attention_mask, pooling="last"):
    """'last' takes the hidden state at position T − 1, a pad for right-padded rows"""
    if pooling != "last":
        return ref.run_embed_batch(model, idx, attention_mask, pooling)
    h = model(idx, attention_mask=attention_mask, output_hidden_states=True, return_logits=False).hidden_states[-1]
    return h[:, -1]


def _loss(e, batch, temperature, symmetric, with_negatives=True):
    from minift.align.contrastive import info_nce
    N = batch["n_pairs"]
    a, b, n = e[:N], e[N:2 * N], e[2 * N:]
    return info_nce(a, b, temperature, n if with_negatives and len(n) else None, symmetric)


def _sgd(model, loss, lr, accumulate=False, sign=1.0):
    params = [p for p in model.parameters() if p.requires_grad]
    if accumulate:                                     # backward() adds to whatever .grad held
        loss.backward()
        grads = [p.grad for p in params]
    else:
        grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(sign * lr * g)


def _embed(model, batch):
    return ref.run_embed_batch(model, batch["idx"], batch["attention_mask"], "last")


def run_contrastive_step__stale_grad(model, batch, temperature, lr, symmetric=False):
    """calls loss.backward() without zeroing .grad first, so a stale gradient is added to this batch's"""
    loss = _loss(_embed(model, batch), batch, temperature, symmetric)
    _sgd(model, loss, lr, accumulate=True)
    return loss.detach()


def run_contrastive_step__ascent(model, batch, temperature, lr, symmetric=False):
    """adds the gradient instead of subtracting it (θ + lr ∇L)"""
    loss = _loss(_embed(model, batch), batch, temperature, symmetric)
    _sgd(model, loss, lr, sign=-1.0)
    return loss.detach()


def run_contrastive_step__loss_after_step(model, batch, temperature, lr, symmetric=False):
    """returns the loss after the step instead of before it"""
    ref.run_contrastive_step(model, batch, temperature, lr, symmetric)
    with torch.no_grad():
        return _loss(_embed(model, batch), batch, temperature, symmetric)


def run_contrastive_step__negatives_dropped(model, batch, temperature, lr, symmetric=False):
    """leaves the hard negatives out of the softmax (in-batch negatives only)"""
    loss = _loss(_embed(model, batch), batch, temperature, symmetric, with_negatives=False)
    _sgd(model, loss, lr)
    return loss.detach()


def run_contrastive_step__symmetric_ignored(model, batch, temperature, lr, symmetric=False):
    """always the one-way loss, whatever `symmetric` says"""
    return ref.run_contrastive_step(model, batch, temperature, lr, False)


def run_contrastive_step__no_attention_mask(model, batch, temperature, lr, symmetric=False):
    """embeds without the attention mask"""
    e = run_embed_batch__no_attention_mask(model, batch["idx"], batch["attention_mask"], "last")
    loss = _loss(e, batch, temperature, symmetric)
    _sgd(model, loss, lr)
    return loss.detach()
