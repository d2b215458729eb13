"""The tiny ViT: patches in order, attention over all patches, and the course's PEFT methods
applied to it unchanged (issue 12, part 3: PEFT beyond text)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.peft.adapters import AdapterConfig, apply_adapters
from minift.peft.common import disable_adapters
from minift.peft.lora import LoRAConfig, apply_lora, merge_lora
from minift.train import TrainConfig, stack_collate, train
from minift.vision import SHAPES, ViT, ViTConfig, image_items, image_loss, shapes

pytestmark = pytest.mark.lesson22
CFG = ViTConfig(image_size=12, patch_size=4, n_layer=2, n_head=2, n_embd=16)


def _vit(seed=0):
    torch.manual_seed(seed)
    return ViT(CFG).eval()


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 5))
def test_patches_are_the_image_cut_row_by_row(seed):
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
    p = _vit().patches(x)                                              # (2, 9, 48)
    k = 0
    for i in range(3):
        for j in range(3):                                             # patch (i, j), written out
            assert torch.equal(p[:, k], x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(2, -1))
            k += 1


def test_attention_is_bidirectional_and_the_class_depends_on_every_patch():
    m = _vit()
    x = torch.randn(1, 3, 12, 12)
    y = m(x)
    x2 = x.clone()
    x2[:, :, 8:, 8:] += 1.0                                            # only the last patch changes
    assert not torch.allclose(m(x2), y)                               # [CLS] (position 0) sees it


def test_lora_and_adapters_apply_unchanged_and_start_as_no_ops():
    x, _ = shapes(4, "solid", 0, 12)
    for cfg, apply in ((LoRAConfig(r=2, alpha=4, targets=("attn.c_attn", "mlp.c_fc")), apply_lora),
                       (AdapterConfig(bottleneck=4), apply_adapters)):
        m = _vit()
        before = m(x)
        names = apply(m, cfg)
        assert names and all(n.startswith("h.") for n in names)
        torch.testing.assert_close(m(x), before, atol=0, rtol=0)       # B = 0 / up-projection = 0
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n or "adapter" in n or n.startswith("head.") for n in trainable)
        with disable_adapters(m):
            torch.testing.assert_close(m(x), before, atol=0, rtol=0)


def test_a_lora_vit_trains_and_merges():
    x, y = shapes(64, "shifted", 0, 12)
    m = _vit()
    apply_lora(m, LoRAConfig(r=2, alpha=4, targets=("attn.c_attn",)))
    hist = train(m, image_items(x, y), TrainConfig(steps=15, batch_size=16, lr=1e-2, progress=False),
                 loss_fn=image_loss, collate_fn=stack_collate)
    assert hist[-1]["loss"] < hist[0]["loss"]
    m.eval()
    out = m(x)
    merge_lora(m)
    torch.testing.assert_close(m(x), out, atol=1e-5, rtol=1e-5)


def test_the_shape_images_are_what_they_say():
    x, y = shapes(200, "solid", 3, 24)
    assert x.shape == (200, 3, 24, 24) and y.shape == (200,) and set(y.tolist()) == set(range(len(SHAPES)))
    assert torch.equal(shapes(200, "solid", 3, 24)[0], x)               # deterministic
    lit = (x.sum(1) > 0).float().mean((1, 2))                          # share of shape pixels
    assert bool((lit > 0.02).all()) and bool((lit < 0.5).all())
    xs, _ = shapes(50, "shifted", 3, 24)
    bg = xs[:, :, 0, 0]                                                # a corner: background, never the shape
    assert float(xs.max()) <= 1.0 and bool(((bg >= 0.1) & (bg <= 0.3)).all())   # noisy dark grey
    assert bool((bg[:, 0] == bg[:, 1]).all())                          # grey: the channels agree


def test_bad_inputs_raise_clearly():
    m = _vit()
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 3, 12, 12\)"):
        m(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        apply_lora(m, LoRAConfig(r=2, targets=("transformer.wte",)))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="style"):
        shapes(4, "cartoon")
