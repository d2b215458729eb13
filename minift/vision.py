"""A tiny vision transformer and a synthetic image world: PEFT beyond text.

ViT (Dosovitskiy et al., 2021) reads an image as a sequence: cut it into P x P patches, flatten
each patch and project it to the model width, add a learned position per patch, prepend a
learned [CLS] vector, and run the SAME transformer blocks as the GPT (minift.model.Block), with
attention over all patches (no causal mask). The class is read from the final [CLS] state:

    x (B, 3, S, S) -> patches (B, N, 3 P P), N = (S / P)^2
    h_0 = [cls ; patches W_E^T + b_E] + E_pos                       (B, N + 1, C)
    h_l = Block_l(h_{l-1}), bidirectional                           l = 1 .. L
    logits = head(LN(h_L[:, 0]))                                    (B, K)

Because the blocks are minift's own, the module names are the GPT's (h.0.attn.c_attn,
h.0.mlp.c_fc, ...) and every PEFT method of the course applies unchanged:
`apply_lora(vit, LoRAConfig(targets=("attn.c_attn",)))`, `apply_adapters(vit, ...)`.

The images are generated, never downloaded (`shapes`): one shape (circle, square, triangle,
cross) of random size and position on a background. `shapes(..., style="solid")` is the
pretraining world (shapes of any bright colour on black); `style="shifted"` is the shifted one
(the same shapes on a noisy dark-grey background): the same four labels, a different look, the
setting in which PEFT is expected to adapt a frozen backbone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .model import Block, GPTConfig, check_target_ids
from .validate import check_float, check_int

SHAPES = ("circle", "square", "triangle", "cross")
STYLES = ("solid", "shifted")


@dataclass
class ViTConfig:
    image_size: int = 24
    patch_size: int = 4
    channels: int = 3
    n_classes: int = len(SHAPES)
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("image_size", "patch_size", "channels", "n_classes", "n_layer", "n_head", "n_embd"):
            check_int(self, name, getattr(self, name), lo=1)
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size={self.image_size} must be a multiple of "
                             f"patch_size={self.patch_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ViTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        check_float(self, "dropout", self.dropout, 0, 1, hi_open=True)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, c, H, W) -> (B, N, c P P): non-overlapping P x P patches, row by row (N = H W / P²);
    patch k = (row k // (W/P), column k % (W/P)), flattened channel-major like x[:, :, rows, cols]."""
    if x.dim() != 4:
        raise ValueError(f"images must have shape (batch, channels, height, width), got {tuple(x.shape)}")
    B, c, H, W = x.shape
    P = patch_size
    if isinstance(P, bool) or not isinstance(P, int) or P < 1 or H % P or W % P:
        raise ValueError(f"patch_size={P!r} must be an int >= 1 dividing the image's height {H} and width {W}")
    x = x.reshape(B, c, H // P, P, W // P, P).permute(0, 2, 4, 1, 3, 5)              # (B, H/P, W/P, c, P, P)
    return x.reshape(B, (H // P) * (W // P), c * P * P)                                # (B, N, c P P)


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg
        g = GPTConfig(vocab_size=1, block_size=cfg.n_patches + 1, n_layer=cfg.n_layer, n_head=cfg.n_head,
                      n_embd=cfg.n_embd, dropout=cfg.dropout)
        self.patch_embed = nn.Linear(cfg.channels * cfg.patch_size ** 2, cfg.n_embd)   # W_E
        dev = self.patch_embed.weight.device                             # where nn.Linear put its weight
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.n_embd, device=dev))
        self.pos = nn.Parameter(0.02 * torch.randn(1, cfg.n_patches + 1, cfg.n_embd, device=dev))  # E_pos
        self.h = nn.ModuleList(Block(g) for _ in range(cfg.n_layer))     # named like GPT's transformer.h
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, c, S, S) -> (B, N, c P P), checked against the config's image shape."""
        c, S = self.config.channels, self.config.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, S, S):
            raise ValueError(f"images must have shape (batch, {c}, {S}, {S}), got {tuple(x.shape)}")
        return patchify(x, self.config.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_embed(self.patches(x))                                          # (B, N, C)
        h = torch.cat([self.cls.expand(p.shape[0], -1, -1), p], dim=1) + self.pos      # (B, N + 1, C)
        everything = torch.ones(1, 1, h.shape[1], h.shape[1], dtype=torch.bool, device=h.device)  # no causal mask
        for block in self.h:
            h, _ = block(h, everything)
        return self.head(self.ln_f(h[:, 0]))                                           # (B, K)


def _masks(kind: torch.Tensor, cx, cy, r, S: int, hollow: bool) -> torch.Tensor:
    """(N, S, S) boolean pixels of each image's shape."""
    grid = torch.arange(S, dtype=cx.dtype, device=cx.device)                          # (S,)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]                # (N, S, S)
    rr = r[:, None, None]

    def inside(rr):
        circle = dx ** 2 + dy ** 2 <= rr ** 2
        square = torch.maximum(dx.abs(), dy.abs()) <= rr * 0.85
        triangle = (dy <= rr * 0.8) & (dy >= -rr) & (dx.abs() <= (dy + rr) * 0.6)
        arm = rr / 3
        cross = ((dx.abs() <= arm) & (dy.abs() <= rr)) | ((dy.abs() <= arm) & (dx.abs() <= rr))
        k = kind[:, None, None]
        return torch.where(k == 0, circle, torch.where(k == 1, square, torch.where(k == 2, triangle, cross)))
    m = inside(rr)
    return m & ~inside(rr - 1.5) if hollow else m


def shapes(n: int, style: str = "solid", seed: int = 0, image_size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated images (n, 3, S, S) in [0, 1] and their labels (n,) = index into SHAPES.
    The shape is filled with a random bright colour (each channel in [0.4, 1]); style "solid"
    puts it on black, "shifted" on a noisy dark grey (each pixel in [0.1, 0.3]). Deterministic for (n, style, seed, image_size)."""
    if style not in STYLES:
        raise ValueError(f"style={style!r} must be one of {list(STYLES)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an int >= 1")
    if image_size < 12:
        raise ValueError(f"image_size={image_size} must be >= 12 for the shapes to be told apart")
    g = torch.Generator().manual_seed(seed * 2 + (style == "shifted"))
    cpu = dict(generator=g, device="cpu")          # a data set: drawn and kept on the CPU (train moves batches)
    S = image_size
    label = torch.randint(0, len(SHAPES), (n,), **cpu)
    r = S * (0.22 + 0.12 * torch.rand(n, **cpu))                                       # radius, pixels
    cx = r + (S - 1 - 2 * r) * torch.rand(n, **cpu)
    cy = r + (S - 1 - 2 * r) * torch.rand(n, **cpu)
    m = _masks(label, cx, cy, r, S, hollow=False).float()[:, None]                    # (n, 1, S, S)
    col = (0.4 + 0.6 * torch.rand(n, 3, **cpu))[:, :, None, None]                     # any bright colour (n, 3, 1, 1)
    if style == "solid":
        bg = m.new_zeros(n, 3, S, S)
    else:
        bg = (0.1 + 0.2 * torch.rand(n, 1, S, S, **cpu)).expand(n, 3, S, S)            # noisy dark grey
    return bg * (1 - m) + col * m, label


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    model.eval()
    dev = next(model.parameters()).device                                 # batches go to the model
    with torch.no_grad():
        pred = torch.cat([model(images[i:i + batch_size].to(dev)).argmax(-1)
                          for i in range(0, len(images), batch_size)])
    return float((pred == labels.to(dev)).float().mean())


def image_items(images: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Items for minift.train.train: {"images": (3, S, S), "labels": ()}."""
    return [{"images": x, "labels": y} for x, y in zip(images, labels)]


def image_loss(model: nn.Module, batch: dict):
    """Cross-entropy of the class logits: the loss_fn of minift.train.train for images."""
    logits = model(batch["images"])
    check_target_ids(batch["labels"], logits.size(-1), "labels", "n_classes")
    loss = nn.functional.cross_entropy(logits, batch["labels"])
    return loss, {"acc": float((logits.argmax(-1) == batch["labels"]).float().mean())}


__all__ = ["SHAPES", "ViT", "ViTConfig", "accuracy", "image_items", "image_loss", "patchify", "shapes"]
