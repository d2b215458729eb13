"""Checkpoints: bit-identical round trips, strict loading that names keys, atomic writes."""
import os

import pytest
import torch

from minift.checkpoint import (load_model, load_trainable, load_tensors, save_model, save_tensors,
                               save_trainable)
from minift.model import GPT, GPTConfig

pytestmark = pytest.mark.core
CFG = GPTConfig(vocab_size=30, block_size=10, n_layer=2, n_head=2, n_embd=8)


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(CFG).eval()


def test_round_trip_gives_bit_identical_logits(tmp_path):
    m = _model()
    save_model(m, str(tmp_path), extra={"note": "x"})
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]   # no temp left
    m2 = load_model(str(tmp_path))
    idx = torch.randint(0, 30, (2, 10))
    assert torch.equal(m(idx).logits, m2(idx).logits)
    assert m2.lm_head.weight is m2.transformer.wte.weight                        # still tied


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    m = _model()
    save_model(m, str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    sd = load_tensors(path)
    sd.pop("transformer.h.1.mlp.c_fc.bias")
    sd["transformer.h.9.extra"] = torch.zeros(1)
    sd["transformer.ln_f.weight"] = torch.zeros(5)
    save_tensors(sd, path)
    with pytest.raises(ValueError) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    assert "missing keys ['transformer.h.1.mlp.c_fc.bias']" in msg
    assert "unexpected keys ['transformer.h.9.extra']" in msg
    assert "transformer.ln_f.weight: file (5,) vs model (8,)" in msg


def test_truncated_or_foreign_files_raise_value_error(tmp_path):
    m = _model()
    save_model(m, str(tmp_path))
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_model(str(tmp_path))
    path.write_bytes(b"PK\x03\x04 this is a zip/pickle, not safetensors")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model": {"n_layers": 2}}')
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        load_model(str(tmp_path))


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = str(tmp_path / "w.safetensors")
    save_tensors({"a": torch.ones(3)}, path)
    with pytest.raises(TypeError, match="value for key 'b' is str"):
        save_tensors({"a": torch.zeros(3), "b": "oops"}, path)
    assert torch.equal(load_tensors(path)["a"], torch.ones(3))                  # old file intact
    assert os.listdir(tmp_path) == ["w.safetensors"]                            # no temp file


def test_trainable_only_state_round_trip(tmp_path):
    m = _model()
    for n, p in m.named_parameters():
        p.requires_grad = n.endswith(".bias")
    path = str(tmp_path / "bias.safetensors")
    save_trainable(m, path, metadata={"method": "bitfit"})
    keys = set(load_tensors(path))
    assert keys and all(k.endswith(".bias") for k in keys)
    m2 = _model(seed=1)
    for n, p in m2.named_parameters():
        p.requires_grad = n.endswith(".bias")
    load_trainable(m2, path)
    for k in keys:
        assert torch.equal(m2.state_dict()[k], m.state_dict()[k])
    for n, p in m2.named_parameters():                     # a different trainable set is refused
        p.requires_grad = n.endswith(".weight")
    with pytest.raises(ValueError, match="missing keys"):
        load_trainable(m2, path)
