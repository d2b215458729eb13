"""The PEFT taxonomy (minift/taxonomy.py) against what each method does: a class that predicts
"mergeable" must merge into a model of the base's architecture computing the adapted function; a
class that predicts "not mergeable" must be refused, with the layers named."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from test_method_contract import CFG, METHODS, SELECTIVE, _idx, _perturb

from minift.model import GPT
from minift.peft.common import CONFIGS, adapter_layers, apply_config
from minift.peft.selective import SelectiveConfig
from minift.quant.int8 import Int8Linear
from minift.quant.ops import NF4Linear
from minift.quant.qlora import QLoRAConfig
from minift.taxonomy import CONSEQUENCES, FAMILIES, family, merge_into_base
from strategies import tiny_model

pytestmark = pytest.mark.lesson19
# the course's reading of the literature's classes, written out here once, independently of the code
EXPECTED = {"selective": {"SelectiveConfig", "MaskingConfig"},
            "reparameterization": {"LoRAConfig", "QLoRAConfig"},
            "additive": {"AdapterConfig", "PrefixConfig", "PromptConfig", "ReFTConfig"}}


def test_every_method_config_has_its_class():
    classes = {c.__name__: family(c.__new__(c)) for c in [SelectiveConfig, *CONFIGS.values()]}
    assert {f: {n for n, g in classes.items() if g == f} for f in EXPECTED} == EXPECTED
    assert set(CONSEQUENCES) == set(FAMILIES)
    with pytest.raises(TypeError, match="method config"):
        family({"r": 4})


def _types(model):
    return sorted({type(m).__name__ for m in model.modules()})


@pytest.mark.parametrize("method", sorted(METHODS) + ["selective"])
@settings(deadline=None, max_examples=3)
@given(data=st.data())
def test_the_class_predicts_whether_the_method_merges_into_the_base(method, data):
    cfg = data.draw(SELECTIVE if method == "selective" else METHODS[method].configs, label="cfg")
    model = apply_config(tiny_model(CFG, dtype=torch.float64), cfg)
    with torch.no_grad():
        _perturb(model)
        y = model(_idx()).logits
    if not CONSEQUENCES[family(cfg)].mergeable:
        names = [n for n, _ in adapter_layers(model)]
        assert names                                                     # the added modules are adapter layers
        with pytest.raises(ValueError, match="additive layers have no weight to merge into") as e:
            merge_into_base(model)
        assert names[0] in str(e.value)
        assert [n for n, _ in adapter_layers(model)] == names            # refused before changing anything
        return
    merge_into_base(model)
    assert not list(adapter_layers(model))
    assert not getattr(model, "peft_methods", [])                        # nothing left to save as an adapter
    quantized = {"NF4Linear", "Int8Linear"} if isinstance(cfg, QLoRAConfig) else set()
    assert set(_types(model)) - quantized == set(_types(GPT(CFG)))          # the base's architecture
    assert all(isinstance(m, (NF4Linear, Int8Linear)) for m in model.modules()
               if type(m).__name__ in quantized)
    if getattr(cfg, "quant", None) == "int8":
        return          # LLM.int8() rounds x too: merged into float, the layer computes without that rounding
    with torch.no_grad():
        torch.testing.assert_close(model(_idx()).logits, y, rtol=1e-10, atol=1e-10)   # the adapted function
