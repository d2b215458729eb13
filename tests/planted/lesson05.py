"""Planted bugs for lesson 05 (LoRA): copies of the reference `run_*` functions, each with one plausible
learner mistake. tests/test_planted.py swaps each into the reference and asserts that a check of its
function fails. Do not copy from this file."""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from minift.conformance import reference as ref
from minift.peft.lora import LoRALinear, lora_layers


# ---- warm-ups ------------------------------------------------------------------------------------

def _lora(x, W0, b, A, B, s):
    return F.linear(x, W0, b) + s * ((x @ A.T) @ B.T)


def run_lora_linear__no_scaling(x, W0, b, A, B, alpha, r, rslora=False):
    """forgets the scaling s (uses s = 1)"""
    return _lora(x, W0, b, A, B, 1.0)


def run_lora_linear__rslora_ignored(x, W0, b, A, B, alpha, r, rslora=False):
    """uses alpha / r for rsLoRA too"""
    return _lora(x, W0, b, A, B, alpha / r)


def run_lora_linear__scaling_r_over_alpha(x, W0, b, A, B, alpha, r, rslora=False):
    """inverts the scaling: r / alpha"""
    return _lora(x, W0, b, A, B, (math.sqrt(r) if rslora else r) / alpha)


def run_lora_merge__no_scaling(W0, A, B, scaling):
    """forgets the scaling s"""
    return ref.run_lora_merge(W0, A, B, 1.0)


def run_lora_merge__paper_layout(W0, A, B, scaling):
    """adds A^T B^T (the paper's (in, out) layout) instead of B A"""
    return (W0.float() + scaling * (A.T.float() @ B.T.float())).to(W0.dtype)


def run_lora_merge__in_bfloat16(W0, A, B, scaling):
    """computes the merge in W0's dtype (bfloat16 rounds twice) instead of float32"""
    return W0 + scaling * (B.to(W0.dtype) @ A.to(W0.dtype))


def run_lora_merge__in_place(W0, A, B, scaling):
    """writes the merged weight into W0 itself"""
    W = ref.run_lora_merge(W0, A, B, scaling)
    W0.copy_(W)
    return W0


def run_lora_unmerge__adds(W, A, B, scaling):
    """adds s B A again instead of subtracting it"""
    return ref.run_lora_merge(W, A, B, scaling)


def run_lora_unmerge__no_scaling(W, A, B, scaling):
    """forgets the scaling s"""
    return ref.run_lora_unmerge(W, A, B, 1.0)


def run_lora_unmerge__in_place(W, A, B, scaling):
    """subtracts in place, changing the caller's W"""
    W.sub_((scaling * (B.float() @ A.float())).to(W.dtype))
    return W


def run_lora_unmerge__returns_float32(W, A, B, scaling):
    """computes in float32 and forgets to cast back to W's dtype"""
    return W.float() - scaling * (B.float() @ A.float())


def run_lora_dropout_forward__on_base_path(x, W0, b, A, B, s, p, mask):
    """applies dropout to x before the whole layer, so the base path is dropped too"""
    xd = x * mask / (1 - p)
    return _lora(xd, W0, b, A, B, s)


def run_lora_dropout_forward__no_rescale(x, W0, b, A, B, s, p, mask):
    """forgets the 1 / (1 - p) rescaling of kept inputs"""
    return F.linear(x, W0, b) + s * (((x * mask) @ A.T) @ B.T)


def run_lora_dropout_forward__mask_inverted(x, W0, b, A, B, s, p, mask):
    """reads the mask as 1 = dropped"""
    return ref.run_lora_dropout_forward(x, W0, b, A, B, s, p, 1 - mask)


def run_lora_dropout_forward__rescale_by_p(x, W0, b, A, B, s, p, mask):
    """rescales kept inputs by 1 / p instead of 1 / (1 - p)"""
    return F.linear(x, W0, b) + s * (((x * mask / p) @ A.T) @ B.T)


def run_dora_linear__column_norm(x, W0, b, A, B, m, alpha, r):
    """takes the norm of each column of V (the paper's layout) instead of each row"""
    V = W0 + (alpha / r) * (B @ A)
    n = torch.linalg.vector_norm(V, dim=0)                       # (in,): one per column
    return F.linear(x, m[:, None] * V / n, b)


def run_dora_linear__no_magnitude(x, W0, b, A, B, m, alpha, r):
    """normalises the rows but forgets to multiply by m"""
    V = W0 + (alpha / r) * (B @ A)
    return F.linear(x, V / torch.linalg.vector_norm(V, dim=1, keepdim=True), b)


# ---- the assignment: the layer -------------------------------------------------------------------

class _Layer(LoRALinear):
    def __init__(self, base, r, alpha, dropout=0.0):
        super().__init__(base, int(r), float(alpha), float(dropout))
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad = False


def run_lora_layer__base_trainable(linear, r, alpha, dropout=0.0):
    """forgets to freeze the wrapped weight and bias"""
    return LoRALinear(linear, int(r), float(alpha), float(dropout))


def run_lora_layer__B_random(linear, r, alpha, dropout=0.0):
    """initialises B at random and A at zero (the wrong one is zero)"""
    layer = _Layer(linear, r, alpha, dropout)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
        layer.lora_A.zero_()
    return layer


def run_lora_layer__no_scaling(linear, r, alpha, dropout=0.0):
    """uses s = 1 instead of alpha / r"""
    layer = _Layer(linear, r, alpha, dropout)
    layer.scaling = 1.0
    return layer


class _DropOutput(_Layer):
    def forward(self, x):
        return self.lora_dropout(super().forward(x))             # dropout on the whole output


def run_lora_layer__dropout_on_output(linear, r, alpha, dropout=0.0):
    """applies dropout to the layer's whole output instead of the branch's input"""
    return _DropOutput(linear, r, alpha, dropout)


class _NoRescale(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p).to(x.dtype)    # kept inputs not scaled by 1 / (1 - p)


def run_lora_layer__dropout_no_rescale(linear, r, alpha, dropout=0.0):
    """drops branch inputs without scaling the kept ones by 1 / (1 - p)"""
    layer = _Layer(linear, r, alpha, dropout)
    layer.lora_dropout = _NoRescale(float(dropout))
    return layer


class _AlwaysDrop(nn.Module):
    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, training=True)               # ignores self.training


def run_lora_layer__dropout_always_on(linear, r, alpha, dropout=0.0):
    """keeps dropping in eval mode too (dropout called with training=True)"""
    layer = _Layer(linear, r, alpha, dropout)
    layer.lora_dropout = _AlwaysDrop(float(dropout))
    return layer


# ---- the assignment: the surgery -----------------------------------------------------------------

def run_apply_lora__forgot_freeze(model, targets, r, alpha, dropout=0.0):
    """replaces the layers but leaves the rest of the model trainable"""
    ref.run_apply_lora(model, targets, r, alpha, dropout)
    for p in model.parameters():
        p.requires_grad = True
    for _, m in lora_layers(model):
        m.weight.requires_grad = False
        if m.bias is not None:
            m.bias.requires_grad = False
    return model


def run_apply_lora__last_part_match(model, targets, r, alpha, dropout=0.0):
    """matches a target by its last name part only ("attn.c_proj" also adapts mlp.c_proj)"""
    return ref.run_apply_lora(model, sorted({t.split(".")[-1] for t in targets}), r, alpha, dropout)


def run_apply_lora__lora_frozen(model, targets, r, alpha, dropout=0.0):
    """freezes everything, lora_A and lora_B too ("forgot to unfreeze A and B")"""
    ref.run_apply_lora(model, targets, r, alpha, dropout)
    for p in model.parameters():
        p.requires_grad = False
    return model


def run_apply_lora__A_zero(model, targets, r, alpha, dropout=0.0):
    """initialises A at zero as well as B: no gradient ever reaches either"""
    ref.run_apply_lora(model, targets, r, alpha, dropout)
    with torch.no_grad():
        for _, m in lora_layers(model):
            m.lora_A.zero_()
    return model


def run_apply_lora__scaling_alpha(model, targets, r, alpha, dropout=0.0):
    """uses s = alpha instead of alpha / r"""
    ref.run_apply_lora(model, targets, r, alpha, dropout)
    for _, m in lora_layers(model):
        m.scaling = float(alpha)
    return model


def run_apply_lora__renames_base(model, targets, r, alpha, dropout=0.0):
    """keeps the wrapped layer as a submodule `base`, so its weight is renamed `....base.weight`"""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(
        re.search(rf"(^|\.){re.escape(t)}$", n) for t in targets)]
    for p in model.parameters():
        p.requires_grad = False
    for n in names:
        lin = model.get_submodule(n)
        holder = nn.Module()
        holder.base = lin
        holder.lora_A = nn.Parameter(torch.empty(r, lin.in_features))
        nn.init.kaiming_uniform_(holder.lora_A, a=math.sqrt(5))
        holder.lora_B = nn.Parameter(torch.zeros(lin.out_features, r))
        holder.forward = (lambda h: lambda x: h.base(x) + (alpha / r) * ((x @ h.lora_A.T) @ h.lora_B.T))(holder)
        parent, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent), child, holder)
    return model


# ---- the assignment: merge and unmerge -----------------------------------------------------------

@torch.no_grad()
def run_merge_lora__no_scaling(model):
    """adds B A without the scaling s"""
    for _, m in lora_layers(model):
        if not m.merged:
            m.weight.add_(m.lora_B @ m.lora_A)
            m.merged = True
    return model


@torch.no_grad()
def run_merge_lora__twice_adds(model):
    """has no merged flag: merging twice adds s B A twice"""
    for _, m in lora_layers(model):
        m.weight.add_(m.scaling * (m.lora_B @ m.lora_A))
        m.merged = True
    return model


@torch.no_grad()
def run_merge_lora__weight_only(model):
    """adds s B A to the weight but leaves the branch on, so the update counts twice"""
    for _, m in lora_layers(model):
        m.weight.add_(m.scaling * (m.lora_B @ m.lora_A))
    return model


@torch.no_grad()
def run_unmerge_lora__always_subtracts(model):
    """subtracts s B A whether or not the layer was merged"""
    for _, m in lora_layers(model):
        m.weight.sub_(m.scaling * (m.lora_B @ m.lora_A))
        m.merged = False
    return model


@torch.no_grad()
def run_unmerge_lora__stays_merged(model):
    """restores W0 but leaves the layer marked merged, so the branch stays off"""
    for _, m in lora_layers(model):
        if m.merged:
            m.weight.sub_(m.scaling * (m.lora_B @ m.lora_A))
    return model


@torch.no_grad()
def run_unmerge_lora__adds(model):
    """adds s B A again instead of subtracting it"""
    for _, m in lora_layers(model):
        if m.merged:
            m.weight.add_(m.scaling * (m.lora_B @ m.lora_A))
            m.merged = False
    return model
