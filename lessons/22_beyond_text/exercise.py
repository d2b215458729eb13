"""Lesson 22 exercise: an image as a sequence of patches, the ViT's tokenizer.

Fill in the function below (delete the `raise NotImplementedError`), then grade your file with
`minift check 22`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The check compares your patches with an explicit loop over the image's blocks on many small
random images; a failure prints the smallest image hypothesis could find.

Rules: plain tensor operations (reshape, permute, view, transpose); do not call minift.

Exercise 3 of the README starts from `try_lora_targets` at the bottom (it calls minift, which is
fine there): `python lessons/22_beyond_text/exercise.py try_lora_targets patch_embed`.
"""

import torch  # noqa: F401


def run_patchify(x, patch_size):
    """(B, c, H, W) -> (B, N, c P²) with P = patch_size and N = (H / P) (W / P), equations (22.1) and
    (22.2) of the README.

    Patch k is the P × P block in row i = ⌊k / (W/P)⌋ and column j = k mod (W/P) of the grid of
    blocks (patches numbered row by row), its values in channel-major order: for channel c' < c and
    u, v < P,

        patch_{b,k} at position (c' P + u) P + v  =  x_{b, c', i P + u, j P + v}
    """
    raise NotImplementedError("run_patchify: not written yet; lessons/22_beyond_text/README.md, "
                              "\"The maths\", equation (22.2), says what it computes")


# ---- try it ------------------------------------------------------------------------------------

def try_lora_targets(*targets, r=4, alpha=8, lr=1e-2):
    """Part 3 and part 4's LoRA row of the walkthrough with the LoRA targets you choose: pretrain the
    ViT on the solid world (400 steps x 32, as the walkthrough), then adapt it to the shifted world
    with LoRA r on the linear layers whose names end with one of `targets` (200 steps x 32), and
    print the shifted and solid test accuracy. The ViT's linear layers: patch_embed,
    h.<l>.attn.c_attn, h.<l>.attn.c_proj, h.<l>.mlp.c_fc, h.<l>.mlp.c_proj.
    Default targets: the walkthrough's ("attn.c_attn", "mlp.c_fc"). Under a minute of CPU
    (the pretraining is most of it).
    Returns the shifted test accuracy."""
    from minift.peft.io import apply_config
    from minift.peft.lora import LoRAConfig
    from minift.train import TrainConfig, stack_collate, train
    from minift.vision import ViT, ViTConfig, accuracy, image_items, image_loss, shapes

    targets = tuple(targets) or ("attn.c_attn", "mlp.c_fc")
    S, P = 24, 6
    solid, solid_y = shapes(6000, "solid", 0, S)
    solid_test, solid_test_y = shapes(500, "solid", 1, S)
    shift, shift_y = shapes(2000, "shifted", 0, S)
    shift_test, shift_test_y = shapes(500, "shifted", 1, S)
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=S, patch_size=P))
    train(vit, image_items(solid, solid_y), TrainConfig(steps=400, batch_size=32, lr=3e-3, seed=0, progress=False),
          loss_fn=image_loss, collate_fn=stack_collate)
    apply_config(vit, LoRAConfig(r=int(r), alpha=float(alpha), targets=targets, include_head=False))
    n = sum(p.numel() for p in vit.parameters() if p.requires_grad)
    train(vit, image_items(shift, shift_y), TrainConfig(steps=200, batch_size=32, lr=float(lr), seed=0, progress=False),
          loss_fn=image_loss, collate_fn=stack_collate)
    acc = accuracy(vit, shift_test, shift_test_y)
    print(f"LoRA r={r} on {targets}: {n:,} trainable; shifted test {acc:.3f}, "
          f"solid test after {accuracy(vit, solid_test, solid_test_y):.3f}")
    return acc


if __name__ == "__main__":         # python lessons/22_beyond_text/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
