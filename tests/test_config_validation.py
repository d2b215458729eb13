"""Every config field is checked when the config is built: a value of the wrong type raises a
TypeError, one out of range (nan and inf included) a ValueError, and either names the field. Also the
model's other inputs that would otherwise give a quiet wrong answer: an attention mask that is not 0/1,
and targets outside the vocabulary."""
import json
import math
import re
from dataclasses import dataclass
from typing import Optional

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.contrastive import ContrastiveConfig
from minift.align.distill import DistillConfig
from minift.align.dpo import DPOConfig
from minift.align.multitask import MixtureConfig
from minift.align.ppo import PPOConfig
from minift.align.reward import RewardConfig
from minift.heads import SequenceClassifier, TokenClassifier
from minift.model import GPT, GPTConfig
from minift.peft.adapters import AdapterConfig
from minift.peft.lora import LoRAConfig
from minift.peft.masking import MaskingConfig
from minift.peft.prefix import PrefixConfig
from minift.peft.prompt import PromptConfig
from minift.peft.reft import ReFTConfig
from minift.peft.selective import SelectiveConfig
from minift.quant.qlora import QLoRAConfig
from minift.scaling import Method
from minift.tasks import collate
from minift.train import TrainConfig, evaluate_nll
from minift.validate import check_float, check_int
from minift.vision import ViT, ViTConfig, image_loss

pytestmark = pytest.mark.core
SET = settings(max_examples=50, deadline=None)


@dataclass
class Spec:
    """What a field accepts. kind: int | float | bool | choice | str | other. lo/hi bound numbers
    (lo_open / hi_open: strictly); `good` lists values accepted beside the defaults' other fields;
    for kind "other" (sequences, regexes, ...) `bad` lists values that must be refused."""
    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    finite: bool = True
    optional: bool = False
    choices: tuple = ()
    good: tuple = ()
    bad: tuple = ()


def Int(lo, hi=None, optional=False, good=None):
    return Spec("int", lo, hi, optional=optional, good=good or (lo, lo + 3) + ((None,) if optional else ()))


def Real(lo=None, hi=None, lo_open=False, hi_open=False, finite=True, optional=False, good=()):
    return Spec("float", lo, hi, lo_open, hi_open, finite, optional, good=good + ((None,) if optional else ()))


def Bool(optional=False):
    return Spec("bool", optional=optional, good=(True, False) + ((None,) if optional else ()))


def Choice(*choices):
    return Spec("choice", choices=choices, good=choices)


UNIT = Real(0, 1, hi_open=True, good=(0, 0.0, 0.5))                 # dropout: [0, 1)
POS = Real(0, lo_open=True, good=(1, 1e-6, 3.5))                    # lr, temperature, ...: > 0
NONNEG = Real(0, good=(0, 0.0, 2.5))                                # weights, clips: >= 0
SEED = Int(0)
LAYERS = Spec("other", good=(None, [0], (-1, 0), range(2)), bad=("0", 1, [0.0], [True], [None]))
TARGETS = Spec("other", good=("attn.c_attn", ["attn.c_attn", "mlp.c_fc"]), bad=((), "", 5, [1], ["("]))
QKV_ = Spec("other", good=(None, "q", ["v", "q"]), bad=((), ("q", "x"), ("q", "q"), 5))

def bools(*names):
    return {n: Bool() for n in names}


FIELDS = {
    GPTConfig: dict(vocab_size=Int(1), block_size=Int(1), n_layer=Int(1), n_head=Int(1, good=(1, 2, 4, 8)),
                    n_embd=Int(1, good=(4, 64, 256)), dropout=UNIT, bias=Bool(),
                    layer_norm_epsilon=Real(0, lo_open=True, good=(1e-5, 1, 1e-12))),
    TrainConfig: dict(steps=Int(1), batch_size=Int(1), lr=POS, min_lr_ratio=Real(0, 1, good=(0, 1, 0.1)),
                      warmup_steps=Int(0, optional=True, good=(0, 200, None)), weight_decay=NONNEG,
                      betas=Spec("other", good=((0.9, 0.999), [0.5, 0.0]),
                                 bad=(0.9, (0.9,), (0.9, 0.95, 0.99), (1.0, 0.9), (0.9, math.nan), ("a", "b"))),
                      grad_clip=NONNEG, grad_accum=Int(1), length_buckets=Int(0), eval_every=Int(0),
                      log_every=Int(1), seed=SEED, progress=Bool(), desc=Spec("str", good=("", "sft")),
                      extra=Spec("other", good=({}, {"a": 1}), bad=(None, [], "x")),
                      autocast=Spec("other", good=(None, "bf16", "fp16"), bad=("bfloat16", "fp32", "", 16, True))),
    LoRAConfig: dict(r=Int(1), alpha=POS, dropout=UNIT, targets=TARGETS, qkv=QKV_,
                     **bools("use_rslora", "use_dora", "include_head")),
    QLoRAConfig: dict(r=Int(1), alpha=POS, dropout=UNIT, targets=TARGETS, qkv=QKV_, quant=Choice("nf4", "nf3", "nf2", "int8"),
                      block_size=Spec("int", 2, good=(2, 64, 256), bad=(3, 65)), loftq_iters=Int(0),
                      threshold=Real(0, finite=False, good=(0, 6.0, math.inf)),
                      **bools("use_rslora", "include_head", "double_quant", "quantize_rest")),
    AdapterConfig: dict(kind=Choice("series", "parallel"), placement=Choice("houlsby", "pfeiffer"),
                        bottleneck=Int(1), activation=Choice("relu", "gelu", "silu", "tanh", "identity"),
                        scaling=Real(good=(1, -0.5, 0.0, 4.0)), layers=LAYERS, include_head=Bool()),
    PrefixConfig: dict(n_prefix=Int(1), reparam=Bool(), embed_dim=Int(1, optional=True), hidden=Int(1),
                       init_std=POS, include_head=Bool(),
                       init_ids=Spec("other", good=(None, list(range(10))), bad=([1, 2], [-1] * 10, "abcdefghij", 5))),
    PromptConfig: dict(n_tokens=Int(1),
                       init=Spec("choice", choices=("random", "vocab", "text"), good=("random", "vocab")),
                       init_text=Spec("other", good=(None,), bad=("", "   ", 5)),
                       init_ids=Spec("other", good=(None,), bad=([], [-1], [1.0], 5)), seed=SEED, include_head=Bool()),
    MaskingConfig: dict(density=Real(0, 1, lo_open=True, good=(1, 0.01, 1e-9)), targets=TARGETS, qkv=QKV_,
                        seed=SEED, include_head=Bool()),
    ReFTConfig: dict(r=Int(1), layers=LAYERS, positions=Choice("prompt", "all"), first=Int(0), last=Int(0),
                     tied=Bool(), init=Choice("identity", "random"), include_head=Bool()),
    SelectiveConfig: dict(layers=LAYERS, include_head=Bool(),
                          components=Spec("other", good=(None, "mlp", ["attention", "head"]), bad=(["attn"], 5, [1])),
                          param_types=Spec("other", good=(None, ["bias"]), bad=(["biases"], 5)),
                          patterns=Spec("other", good=((), ["h\\.0\\."]), bad=(["("], 5, [1], None))),
    DPOConfig: dict(beta=POS, loss_type=Choice("sigmoid", "ipo", "hinge"), nll_weight=NONNEG,
                    label_smoothing=Real(0, 0.5, hi_open=True, good=(0, 0.25)), average_logps=Bool(optional=True),
                    precompute_ref=Bool()),
    PPOConfig: dict(steps=Int(1), batch_size=Int(1, good=(32, 100)), max_new_tokens=Int(1), ppo_epochs=Int(1),
                    minibatch_size=Int(1), lr=POS, clip=POS, clip_value=POS, vf_coef=NONNEG, kl_coef=NONNEG,
                    gamma=Real(0, 1, good=(0, 1)), lam=Real(0, 1, good=(0.95, 1)), horizon=Int(1), whiten=Bool(),
                    target_kl=Real(0, lo_open=True, optional=True, good=(6,)), grad_clip=NONNEG, seed=SEED),
    RewardConfig: dict(margin=NONNEG, normalize=Bool()),
    ContrastiveConfig: dict(temperature=POS, pooling=Choice("mean", "last"), symmetric=Bool(), dropout=UNIT),
    DistillConfig: dict(alpha=Real(0, 1, good=(0, 1, 0.5)), temperature=POS, beta=Real(0, 1, good=(0, 1)),
                        divergence=Choice("forward", "reverse", "jsd"), mask=Choice("labels", "real")),
    MixtureConfig: dict(strategy=Choice("proportional", "equal", "temperature"), cap=Int(1, optional=True),
                        temperature=Real(0, lo_open=True, finite=False, good=(2, 0.5, math.inf))),
    Method: dict(name=Spec("str", good=("lora", "")), lr=POS),
    ViTConfig: dict(image_size=Int(1, good=(4, 8, 24)), patch_size=Int(1, good=(1, 3, 24)), channels=Int(1),
                    n_classes=Int(1), n_layer=Int(1), n_head=Int(1, good=(1, 2, 8)), n_embd=Int(1, good=(4, 128)),
                    dropout=UNIT),
}
CASES = [(cls, name, f) for cls, fields in FIELDS.items() for name, f in fields.items()]
TYPED = [c for c in CASES if c[2].kind != "other"]
FLOATS = [c for c in CASES if c[2].kind == "float"]


def build(cls, **kw):
    if cls is Method:
        return Method(**{"name": "lora", "config": None, "lr": 1e-3, **kw})
    return cls(**kw)


def names_field(err: Exception, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", str(err)) is not None


def wrong_type(f: Spec):
    """Values of the wrong kind for a field (never a value it accepts)."""
    junk = st.lists(st.integers(), max_size=2) | st.just(object()) | st.just(b"1")
    if not f.optional:
        junk |= st.none()
    if f.kind == "int":
        return junk | st.booleans() | st.floats() | st.text(max_size=3)       # 4.0 is not an int
    if f.kind == "float":
        return junk | st.booleans() | st.text(max_size=3) | st.complex_numbers()
    if f.kind == "bool":
        return junk | st.integers() | st.floats() | st.text(max_size=3)      # 1 is not True
    return junk | st.integers() | st.floats()                              # choice, str


def out_of_range(f: Spec):
    """Values of the right kind that a field refuses."""
    if f.kind == "choice":
        return st.text(max_size=8).filter(lambda s: s not in f.choices)
    if f.kind == "int":
        below = st.integers(max_value=f.lo - 1)
        return below if f.hi is None else below | st.integers(min_value=f.hi + 1)
    nan = st.just(float("nan"))
    out = nan | (st.sampled_from([math.inf, -math.inf]) if f.finite else st.just(-math.inf))
    if f.lo is not None:
        out |= st.floats(max_value=f.lo, exclude_max=not f.lo_open, allow_nan=False)
    if f.hi is not None:
        out |= st.floats(min_value=f.hi, exclude_min=not f.hi_open, allow_nan=False)
    return out


RANGED = [c for c in TYPED if c[2].kind in ("int", "float", "choice")]
EACH = settings(max_examples=5, deadline=None)             # per field: every field gets its own examples


@pytest.mark.parametrize("cls, name, f", TYPED, ids=[f"{c.__name__}.{n}" for c, n, _ in TYPED])
@EACH
@given(data=st.data())
def test_a_value_of_the_wrong_type_is_a_type_error_naming_the_field(cls, name, f, data):
    value = data.draw(wrong_type(f), label=f"{cls.__name__}.{name}")
    with pytest.raises(TypeError) as e:
        build(cls, **{name: value})
    assert names_field(e.value, name), str(e.value)


@pytest.mark.parametrize("cls, name, f", RANGED, ids=[f"{c.__name__}.{n}" for c, n, _ in RANGED])
@EACH
@given(data=st.data())
def test_a_value_out_of_range_is_a_value_error_naming_the_field(cls, name, f, data):
    value = data.draw(out_of_range(f), label=f"{cls.__name__}.{name}")
    with pytest.raises(ValueError) as e:
        build(cls, **{name: value})
    assert not isinstance(e.value, TypeError), f"{cls.__name__}.{name}={value!r}: a range error, not a type error"
    assert names_field(e.value, name), str(e.value)


@pytest.mark.parametrize("cls, name, f", FLOATS, ids=[f"{c.__name__}.{n}" for c, n, _ in FLOATS])
def test_nan_and_inf_are_refused_by_float_fields(cls, name, f):
    for value in (float("nan"), -math.inf) + ((math.inf,) if f.finite else ()):
        with pytest.raises(ValueError) as e:
            build(cls, **{name: value})
        assert names_field(e.value, name) and not isinstance(e.value, TypeError)


OTHER_BAD = [(cls, name, v) for cls, name, f in CASES if f.kind in ("other", "int") for v in f.bad]


@pytest.mark.parametrize("cls, name, value", OTHER_BAD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in OTHER_BAD])
def test_bad_sequences_and_patterns_are_refused_naming_the_field(cls, name, value):
    with pytest.raises((TypeError, ValueError)) as e:
        build(cls, **{name: value})
    assert names_field(e.value, name), str(e.value)


GOOD = [(cls, name, v) for cls, name, f in CASES for v in f.good]


@pytest.mark.parametrize("cls, name, value", GOOD, ids=[f"{c.__name__}.{n}={v!r}" for c, n, v in GOOD])
def test_good_values_are_accepted_and_kept(cls, name, value):
    cfg = build(cls, **{name: value})
    kept = getattr(cfg, name)
    if FIELDS[cls][name].kind != "other" and value is not None:
        assert kept == value and isinstance(kept, bool) == isinstance(value, bool)
    assert build(cls, **{name: kept}) == cfg                # what a config keeps, it accepts again (as is)


@pytest.mark.parametrize("make", [
    lambda: GPTConfig(**json.loads(json.dumps(GPTConfig(n_layer=2, bias=False).to_dict()))),
    lambda: LoRAConfig.from_dict(json.loads(json.dumps(LoRAConfig(r=4, alpha=8, qkv=None).to_dict()))),
    lambda: AdapterConfig.from_dict(json.loads(json.dumps(AdapterConfig(layers=(0, -1), scaling=4).to_dict()))),
    lambda: QLoRAConfig.from_dict(json.loads(json.dumps(QLoRAConfig(quant="int8", threshold=2).to_dict()))),
    lambda: PromptConfig.from_dict(json.loads(json.dumps(PromptConfig(init="text", init_ids=(3, 4)).to_dict()))),
    lambda: PrefixConfig.from_dict(json.loads(json.dumps(PrefixConfig(n_prefix=2, init_ids=(1, 2)).to_dict()))),
    lambda: ReFTConfig.from_dict(json.loads(json.dumps(ReFTConfig(tied=False, first=2, last=3).to_dict()))),
    lambda: MaskingConfig.from_dict(json.loads(json.dumps(MaskingConfig(density=1, qkv=["v"]).to_dict()))),
    lambda: TrainConfig(steps=10, warmup_steps=10, lr=1, betas=[0.9, 0.99], grad_clip=0),
    lambda: PPOConfig(batch_size=8, minibatch_size=8, target_kl=1),
    lambda: DPOConfig(loss_type="ipo"),
    lambda: MixtureConfig("temperature", temperature=math.inf, cap=100),
    lambda: PromptConfig(init="text", init_text="hello"),
    lambda: SelectiveConfig(layers=[-2, -1], param_types=["bias"], patterns=[r"ln_f\."]),
    lambda: ViTConfig(image_size=12, patch_size=4, n_embd=32, n_head=2),
])
def test_configs_built_as_the_library_builds_them_are_accepted(make):
    cfg = make()
    if hasattr(cfg, "to_dict"):                             # a round trip through JSON gives the same config
        assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("make, field", [
    (lambda: GPTConfig(n_embd=10, n_head=4), "n_embd"),
    (lambda: TrainConfig(steps=10, warmup_steps=11), "warmup_steps"),
    (lambda: DPOConfig(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
    (lambda: PPOConfig(batch_size=8, minibatch_size=16), "minibatch_size"),
    (lambda: ViTConfig(image_size=10, patch_size=4), "image_size"),
    (lambda: ReFTConfig(first=0, last=0), "first"),
    (lambda: PromptConfig(init="vocab", init_text="hi"), "init_text"),
    (lambda: Method("lora", None, 0.0), "lr"),
    (lambda: Method(3, None, 1e-3), "name"),
])
def test_fields_that_do_not_fit_together_are_refused(make, field):
    with pytest.raises(ValueError) as e:
        make()
    assert names_field(e.value, field), str(e.value)


# ---- the helpers themselves --------------------------------------------------------------------

@SET
@given(v=st.integers(-5, 5), lo=st.integers(-3, 3), span=st.integers(0, 3))
def test_check_int_accepts_exactly_the_integers_in_range(v, lo, span):
    hi = lo + span
    if lo <= v <= hi:
        assert check_int("Cfg", "n", v, lo=lo, hi=hi) == v
    else:
        with pytest.raises(ValueError, match=rf"Cfg\.n={v} must be an integer in \[{lo}, {hi}\]"):
            check_int("Cfg", "n", v, lo=lo, hi=hi)


@SET
@given(v=st.floats(allow_nan=True, allow_infinity=True), lo_open=st.booleans(), hi_open=st.booleans())
def test_check_float_accepts_exactly_the_finite_numbers_in_range(v, lo_open, hi_open):
    inside = math.isfinite(v) and (0 < v if lo_open else 0 <= v) and (v < 1 if hi_open else v <= 1)
    if inside:
        assert check_float("Cfg", "x", v, 0, 1, lo_open=lo_open, hi_open=hi_open) == v
    else:
        with pytest.raises(ValueError, match=r"Cfg\.x=.* must be a number in [\[(]0, 1[\])]"):
            check_float("Cfg", "x", v, 0, 1, lo_open=lo_open, hi_open=hi_open)


# ---- model inputs: the attention mask and the targets ---------------------------------------------

CFG = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
MODEL = GPT(CFG).eval()
IDX = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])


@pytest.mark.parametrize("bad", [2, 0.5, -1, float("nan")])
def test_an_attention_mask_holds_only_0_and_1(bad):
    mask = torch.ones(2, 4)
    mask[1, 2] = bad
    with pytest.raises(ValueError, match="attention_mask"):
        MODEL(IDX, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask"):
        MODEL.generate(IDX, 2, attention_mask=mask)
    good = torch.ones(2, 4)
    good[1, 2] = 0
    for ok in (good, good.long(), good.bool()):
        MODEL(IDX, attention_mask=ok)                       # 0/1 as floats, ints or bools is fine


@SET
@given(bad=st.integers(-1000, 1000).filter(lambda t: not 0 <= t < CFG.vocab_size and t != -100),
       row=st.integers(0, 1), col=st.integers(0, 3))
def test_targets_outside_the_vocabulary_are_a_value_error_naming_the_range(bad, row, col):
    targets = IDX.clone()
    targets[row, col] = bad
    with pytest.raises(ValueError, match=rf"targets .*{bad}.* outside \[0, vocab_size=11\)"):
        MODEL(IDX, targets)


def test_ignored_targets_are_accepted_and_float_targets_refused():
    targets = torch.full_like(IDX, -100)
    targets[0, 0] = 10
    assert torch.isfinite(MODEL(IDX, targets).loss)
    assert float(MODEL(IDX, torch.full_like(IDX, -100)).loss.detach()) == 0.0
    with pytest.raises(TypeError, match="targets must be an integer tensor of ids"):
        MODEL(IDX, IDX.float())


def test_heads_refuse_float_labels_and_a_bad_dropout():
    clf = SequenceClassifier(GPT(CFG), 3)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        clf(IDX, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        TokenClassifier(GPT(CFG), 3)(IDX, labels=IDX.float())
    with pytest.raises(ValueError, match=r"SequenceClassifier\.dropout=1\.5"):
        SequenceClassifier(GPT(CFG), 3, dropout=1.5)


@pytest.mark.parametrize("item, what", [({"idx": [1.0, 2.7]}, "idx"), ({"idx": [1, 2], "labels": 0.5}, "labels"),
                                        ({"idx": [1, 2], "targets": [2.7, 3.0]}, "targets")])
def test_collate_refuses_float_ids_instead_of_truncating_them(item, what):
    with pytest.raises(TypeError, match=rf"item 0 has {what} of dtype"):
        collate([item], pad_id=0)
    ok = {k: [int(x) for x in v] if isinstance(v, list) else int(v) for k, v in item.items()}
    assert collate([ok], pad_id=0)["idx"].tolist() == [ok["idx"]]


def test_evaluate_nll_and_image_loss_check_their_targets_too():
    items = [{"idx": IDX[0], "targets": torch.tensor([1, 2, -100, 11])}]
    with pytest.raises(ValueError, match=r"targets hold 11, outside \[0, vocab_size=11\)"):
        evaluate_nll(MODEL, items)
    vit = ViT(ViTConfig(image_size=4, patch_size=2, n_layer=1, n_head=1, n_embd=4, n_classes=3))
    with pytest.raises(ValueError, match=r"labels hold 3, outside \[0, n_classes=3\)"):
        image_loss(vit, {"images": torch.zeros(2, 3, 4, 4), "labels": torch.tensor([0, 3])})
    assert torch.isfinite(image_loss(vit, {"images": torch.zeros(2, 3, 4, 4), "labels": torch.tensor([0, 2])})[0])


# ---- each method config's own messages (marked with its lesson, so `pytest -m lessonNN` keeps them) ----

MESSAGES = [
    (LoRAConfig, pytest.mark.lesson05, [
        (dict(r=0), r"LoRAConfig\.r=0 must be an integer >= 1 \(the rank"),
        (dict(r=-2), r"LoRAConfig\.r=-2"),
        (dict(alpha=0), r"alpha=0 must be a finite number > 0"),
        (dict(dropout=1.0), r"dropout=1.0 must be a number in \[0, 1\)"),
        (dict(qkv=("q", "x")), r"qkv=\('q', 'x'\) must be None"),
        (dict(targets=[]), r"targets=\(\) must be non-empty"),
        (dict(targets=["(unclosed"]), r"not a valid regular expression"),
    ]),
    (AdapterConfig, pytest.mark.lesson06, [
        (dict(kind="serial"), r"kind='serial' must be one of \('series', 'parallel'\)"),
        (dict(placement="after"), r"placement='after' must be one of \('houlsby', 'pfeiffer'\)"),
        (dict(bottleneck=0), r"bottleneck=0 must be an integer >= 1"),
        (dict(activation="swish"), r"activation='swish' must be one of"),
    ]),
    (PrefixConfig, pytest.mark.lesson07, [
        (dict(n_prefix=0), r"n_prefix=0 must be an integer >= 1"),
        (dict(n_prefix=-2), r"n_prefix=-2"),
        (dict(n_prefix=2.5), r"n_prefix=2.5"),
        (dict(n_prefix=True), r"n_prefix=True"),
        (dict(hidden=0), r"hidden=0"),
        (dict(embed_dim=0), r"embed_dim=0"),
        (dict(init_std=0.0), r"init_std=0.0 must be a finite number > 0"),
        (dict(init_std=float("nan")), r"init_std=nan"),
        (dict(n_prefix=3, init_ids=[1, 2]), r"init_ids=\[1, 2\] must be n_prefix=3 token ids"),
        (dict(n_prefix=2, init_ids=[1, -1]), r"init_ids=\[1, -1\] must be n_prefix=2 token ids"),
    ]),
    (PromptConfig, pytest.mark.lesson08, [
        (dict(n_tokens=0), r"n_tokens=0 must be an integer >= 1"),
        (dict(n_tokens=-3), r"n_tokens=-3 must be an integer >= 1"),
        (dict(init="zeros"), r"init='zeros' must be one of \('random', 'vocab', 'text'\)"),
        (dict(init="text", init_text=""), r"init_text='' is empty"),
        (dict(init="text", init_text="   "), r"init_text='   ' is empty"),
        (dict(init="text"), r"needs init_text"),
        (dict(init="vocab", init_text="hi"), r"only used with init='text'"),
        (dict(init="text", init_ids=[]), r"init_ids=\[\] must be a non-empty list"),
    ]),
    (ReFTConfig, pytest.mark.lesson10, [
        (dict(r=0), r"r=0 must be an integer >= 1"),
        (dict(positions="some"), r"positions='some' must be one of \('prompt', 'all'\)"),
        (dict(first=-1), r"first=-1 must be an integer >= 0"),
        (dict(first=0, last=0), r"first=0 and last=0 edit no position"),
        (dict(tied=False, positions="all"), r"tied=False .* needs positions='prompt'"),
        (dict(tied=False, first=0, last=2), r"tied=False .* first >= 1 and last >= 1"),
        (dict(init="zeros"), r"init='zeros' must be one of \('identity', 'random'\)"),
    ]),
]


@pytest.mark.parametrize("cls, kw, match", [pytest.param(cls, kw, match, marks=mark, id=f"{cls.__name__}-{i}")
                                            for cls, mark, rows in MESSAGES for i, (kw, match) in enumerate(rows)])
def test_bad_method_config_values_are_named(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls(**kw)
