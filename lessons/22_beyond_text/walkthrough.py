"""Lesson 22: PEFT beyond text, the same LoRA on a tiny vision transformer.

Prints, top to bottom:

  1. the images: generated shapes (circle, square, triangle, cross), one of each world drawn in
     text: the pretraining world (bright shapes on black) and the shifted one (on noisy dark grey);
  2. the ViT: patches as tokens, the GPT's own blocks, and its module names (h.0.attn.c_attn ...):
     the names every PEFT method of the course looks for;
  3. pretraining on the solid world: accuracy there, and zero-shot on the shifted world;
  4. adapting to the shifted world with the library's methods, unchanged: head-only, LoRA,
     bottleneck adapters, full fine-tuning; trainable share, accuracy on the shifted test set, what
     is left of the solid world, time; and LoRA merged equals LoRA unmerged.

  With --seeds K, at the end: part 4's methods again with seeds 0..K-1 (LoRA and adapter init, data
  order; the same pretrained ViT), and the spread of their shifted and solid test accuracy.

    python lessons/22_beyond_text/walkthrough.py          # or: minift run 22
    python lessons/22_beyond_text/walkthrough.py --fast   # small sets, few steps (the tests)
    python lessons/22_beyond_text/walkthrough.py --seeds 5  # + the seed spread (3.0x the default run's time)

Everything it uses lives in the library (minift/vision.py, minift/peft/, minift/train.py).
"""
EXPECTED_SECONDS = 79
FAST_SECONDS = 11

import copy

import torch

from minift import course
from minift.peft.adapters import AdapterConfig
from minift.peft.common import disable_adapters
from minift.peft.io import apply_config
from minift.peft.lora import LoRAConfig, merge_lora
from minift.peft.selective import SelectiveConfig
from minift.report import header, per_seed, table
from minift.train import TrainConfig, stack_collate, train
from minift.vision import SHAPES, ViT, ViTConfig, accuracy, image_items, image_loss, shapes

# --fast, one thread, the clock (minift/course.py); no language model here: its own ViT is pretrained below
parser = course.parser(__doc__, "small sets and few steps (seconds)")
course.add_seeds(parser, "part 4's methods", "LoRA and adapter init, data order; the same pretrained ViT",
                 "shifted/solid test accuracy", "K=5: 3.0x the default run's time")
args = course.start("22", parser, needs_base=False)
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told): the ViT and the images live there
S, P = 24, 6                                   # 24 x 24 images, 6 x 6 patches: 16 tokens + [CLS]
N_PRE, N_ADAPT, N_TEST = (800, 400, 200) if FAST else (6000, 2000, 500)
PRE_STEPS, ADAPT_STEPS = (10, 5) if FAST else (400, 200)
BATCH = 32                                     # images per step, pretraining and adaptation

# ==============================================================================================
header("1. The images: four shapes, two worlds")
solid, solid_y = (t.to(DEV) for t in shapes(N_PRE, "solid", 0, S))           # drawn on the CPU, then moved
solid_test, solid_test_y = (t.to(DEV) for t in shapes(N_TEST, "solid", 1, S))
shift, shift_y = (t.to(DEV) for t in shapes(N_ADAPT, "shifted", 0, S))
shift_test, shift_test_y = (t.to(DEV) for t in shapes(N_TEST, "shifted", 1, S))


def draw(img):
    """An image as text: '#' bright, '+' mid, '.' dark (mean over the channels)."""
    v = img.mean(0)
    return ["".join("#" if p > 0.45 else "+" if p > 0.2 else "." for p in row) for row in v.tolist()]


for world, imgs, labels in (("the pretraining world (solid)", solid, solid_y), ("the shifted world", shift, shift_y)):
    pick = [int((labels == k).nonzero()[0]) for k in range(len(SHAPES))]
    print(f"{world}:")
    print("  ".join(f"{s:<{S}}" for s in SHAPES))
    for r in list(zip(*[draw(imgs[i]) for i in pick]))[::2]:   # every other row keeps the proportions in text
        print("  ".join(r))
print(f"pretraining world: any bright colour on black; shifted world: the same shapes on noisy dark grey. {N_PRE} pretraining images, {N_ADAPT} shifted training images, "
      f"{N_TEST} test images of each; every set is generated from its own seed.")

# ==============================================================================================
header("2. The ViT: patches are the tokens, the blocks are the GPT's")
cfg = ViTConfig(image_size=S, patch_size=P)
torch.manual_seed(0)
vit = ViT(cfg).to(DEV)                         # drawn on the CPU (the same numbers on every device), moved
n_all = sum(p.numel() for p in vit.parameters())
print(f"ViTConfig({S}x{S}, patch {P}): {cfg.n_patches} patches of 3 x {P} x {P} = {3 * P * P} values -> width "
      f"{cfg.n_embd}, + [CLS], {cfg.n_layer} blocks, {cfg.n_head} heads: {n_all:,} parameters.")
linears = [n for n, m in vit.named_modules() if isinstance(m, torch.nn.Linear)]
print(f"its linear layers: {', '.join(linears[:5])}, ... ({len(linears)} in all): GPT-2's names, because the "
      f"blocks are minift.model.Block, with a mask that lets every patch attend to every other.")

# ==============================================================================================
header("3. Pretraining on the solid world")
t0 = course.clock()                            # CPU seconds here (GPU wall on a GPU): minift/measure.py
train(vit, image_items(solid, solid_y), TrainConfig(steps=PRE_STEPS, batch_size=BATCH, lr=3e-3, seed=0, progress=False),
      loss_fn=image_loss, collate_fn=stack_collate)
t_pre = course.clock() - t0
acc_solid, acc_zero = accuracy(vit, solid_test, solid_test_y), accuracy(vit, shift_test, shift_test_y)
print(f"{PRE_STEPS} steps x {BATCH}, AdamW lr 3e-3, {t_pre:.1f}s {course.clock_name()}: test accuracy {acc_solid:.3f} on the solid world, "
      f"{acc_zero:.3f} zero-shot on the shifted world (chance {1 / len(SHAPES):.2f}).")

# ==============================================================================================
header("4. Adapting to the shifted world with the course's methods, unchanged")
METHODS = [("head-only", SelectiveConfig(patterns=()), 3e-3),
           ("LoRA r=4 (c_attn, c_fc)", LoRAConfig(r=4, alpha=8, targets=("attn.c_attn", "mlp.c_fc"),
                                                   include_head=False), 1e-2),
           ("adapters (bottleneck 8)", AdapterConfig(bottleneck=8, include_head=False), 1e-2),
           ("full fine-tuning", None, 1e-3)]


def adapt(mcfg, lr, seed=0):
    """A copy of the pretrained ViT adapted to the shifted world with `mcfg` (None: every weight) at `lr`.
    `seed` draws the LoRA / adapter init and the order of the batches. -> (model, trainable count, train time)."""
    m = copy.deepcopy(vit)
    torch.manual_seed(seed)                    # LoRA's A and the adapters' down-projections come from the global RNG
    if mcfg is not None:
        apply_config(m, mcfg)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    t0 = course.clock()
    train(m, image_items(shift, shift_y), TrainConfig(steps=ADAPT_STEPS, batch_size=BATCH, lr=lr, seed=seed, progress=False),
          loss_fn=image_loss, collate_fn=stack_collate)
    return m, n, course.clock() - t0


rows, scores, lora_model = [], {}, None        # scores: method -> (shifted test, solid test after) of seed 0
for name, mcfg, lr in METHODS:
    m, n, secs = adapt(mcfg, lr)
    scores[name] = (accuracy(m, shift_test, shift_test_y), accuracy(m, solid_test, solid_test_y))
    if isinstance(mcfg, (LoRAConfig, AdapterConfig)):
        with disable_adapters(m):
            off = accuracy(m, solid_test, solid_test_y)
        off = f"{off:.3f}"
    else:
        off = "-"
    rows.append((name, f"{n:,}", f"{n / n_all:.2%}", f"{lr:g}", f"{scores[name][0]:.3f}",
                 f"{scores[name][1]:.3f}", off, f"{secs:.1f}s"))
    if isinstance(mcfg, LoRAConfig):
        lora_model = m
table(("method", "trainable", "share", "lr", "shifted test", "solid test after", "solid, adapter off", f"train {course.clock_name()}"),
      rows)
print(f"{ADAPT_STEPS} steps x {BATCH} on the {N_ADAPT} shifted images, seed 0; the pretrained ViT scored {acc_zero:.3f} "
      f"zero-shot there and {acc_solid:.3f} on the solid world. 'adapter off': the same model with "
      f"disable_adapters: LoRA and the adapters keep the pretrained head (the labels did not change), so this is "
      f"the pretrained ViT exactly.")
x = shift_test[:64]
with torch.no_grad():
    lora_model.eval()
    before = lora_model(x)
    merge_lora(lora_model)
    diff = float((lora_model(x) - before).abs().max())
print(f"LoRA merged into the ViT's weights (merge_lora) changes the logits by at most {diff:.1e}: no extra cost "
      f"at inference, as for the GPT.")

# ==============================================================================================
if seeds := course.seeds_section(args.seeds, "5. Seed spread: part 4's methods",
                                 "LoRA and adapter init, data order; the same pretrained ViT and images"):
    spread = {name: [scores[name]] for name, _, _ in METHODS}     # seed 0: part 4's runs
    for sd in seeds[1:]:
        for name, mcfg, lr in METHODS:
            m = adapt(mcfg, lr, sd)[0]
            spread[name].append((accuracy(m, shift_test, shift_test_y), accuracy(m, solid_test, solid_test_y)))

    table(("method", "lr", "shifted test per seed", "mean", "range", "solid test after per seed", "mean", "range"),
          [[name, f"{lr:g}"] + per_seed([a for a, _ in spread[name]], spread=True)
           + per_seed([b for _, b in spread[name]], spread=True)
           for name, _, lr in METHODS])
    print(f"accuracy on the {N_TEST} shifted and {N_TEST} solid test images; the pretrained ViT (no seed here): "
          f"{acc_zero:.3f} shifted, {acc_solid:.3f} solid.")

print(f"\ntotal: {course.elapsed():.1f}s")
