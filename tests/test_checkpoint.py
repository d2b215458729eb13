"""Checkpoints: bit-identical round trips, strict loading that names keys, atomic writes, a config
bound to its weights, tied keys that must agree."""
import os
import shutil

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import minift.checkpoint as ckpt
from minift.checkpoint import (file_sha256, load_json, load_model, load_state_dict_strict, load_trainable,
                               load_tensors, save_json, save_model, save_tensors, save_trainable)
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


def _drop_sha(folder):
    """Make folder's config.json like one written before configs recorded their weights' hash."""
    cfg = load_json(str(folder / "config.json"))
    cfg.pop("weights_sha256")
    save_json(cfg, str(folder / "config.json"))


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
    m = _model()
    save_model(m, str(tmp_path))
    _drop_sha(tmp_path)                                      # an older checkpoint: keys are still checked
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


# ---- a checkpoint folder is published as a whole ------------------------------------------------

def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fail_config(monkeypatch):
    def boom(obj, path):
        raise KeyboardInterrupt("interrupted after the weights, before the config")
    monkeypatch.setattr(ckpt, "_write_json", boom)


def _fail_extra_file(monkeypatch):
    def write_tokenizer(path):                               # runs after the weights and the config
        raise RuntimeError("tokenizer writer failed")
    return {"tokenizer.json": write_tokenizer}


def _fail_second_rename(monkeypatch):
    real = os.rename

    def rename(src, dst):
        if ".new-" in os.path.basename(src):                  # the stage moving in: the old one is aside
            raise OSError("simulated failure between the two renames")
        return real(src, dst)
    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("fail", [_fail_config, _fail_extra_file, _fail_second_rename])
def test_an_interrupted_save_leaves_the_old_checkpoint_byte_identical(tmp_path, monkeypatch, fail):
    ck = tmp_path / "ck"
    save_model(_model(0), str(ck), extra={"run": 1}, files={"tokenizer.json": lambda p: open(p, "w").write("{}")})
    (ck / "notes.txt").write_text("my notes")
    before = _snapshot(ck)
    files = fail(monkeypatch) or {}
    with pytest.raises((KeyboardInterrupt, RuntimeError, OSError)):
        save_model(_model(1), str(ck), extra={"run": 2}, files=files)
    monkeypatch.undo()
    assert _snapshot(ck) == before                                               # not one byte changed
    assert os.listdir(tmp_path) == ["ck"]                                       # no stage, no aside left
    idx = torch.randint(0, 30, (2, 10))
    assert torch.equal(load_model(str(ck))(idx).logits, _model(0)(idx).logits)


def test_a_new_checkpoint_is_published_whole_and_nothing_else_is_left(tmp_path, monkeypatch):
    ck = tmp_path / "sub" / "ck"
    _fail_config(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_model(_model(), str(ck))
    assert not ck.exists() and os.listdir(tmp_path / "sub") == []               # no half checkpoint
    monkeypatch.undo()
    save_model(_model(), str(ck), files={"tokenizer.json": lambda p: open(p, "w").write("{}")})
    assert sorted(os.listdir(ck)) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert os.listdir(tmp_path / "sub") == ["ck"]


def test_other_files_in_the_folder_survive_a_resave(tmp_path):
    ck = tmp_path / "ck"
    save_model(_model(0), str(ck))
    (ck / "notes.txt").write_text("keep me")
    (ck / "logs").mkdir()
    (ck / "logs" / "train.csv").write_text("step,loss\n1,2.0\n")
    old_weights = (ck / "model.safetensors").read_bytes()
    save_model(_model(1), str(ck), extra={"run": 2})
    assert (ck / "notes.txt").read_text() == "keep me"
    assert (ck / "logs" / "train.csv").read_text() == "step,loss\n1,2.0\n"
    assert (ck / "model.safetensors").read_bytes() != old_weights                # the new weights
    assert load_json(str(ck / "config.json"))["run"] == 2
    assert os.listdir(tmp_path) == ["ck"]
    idx = torch.randint(0, 30, (2, 10))
    assert torch.equal(load_model(str(ck))(idx).logits, _model(1)(idx).logits)


def test_a_crash_between_the_renames_is_named_by_load_model(tmp_path):
    ck = tmp_path / "ck"
    save_model(_model(), str(ck))
    os.rename(ck, tmp_path / ".ck.old-0123abcd")                                  # what a power cut there leaves
    with pytest.raises(ValueError, match=r"ck is missing.*\.ck\.old-0123abcd"):
        load_model(str(ck))
    shutil.rmtree(tmp_path / ".ck.old-0123abcd")
    with pytest.raises(ValueError, match="not found"):
        load_model(str(ck))


def test_save_model_refuses_names_it_writes_itself_and_the_working_directory(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="weights_sha256"):
        save_model(_model(), str(tmp_path / "a"), extra={"weights_sha256": "0" * 64})
    with pytest.raises(ValueError, match="model"):
        save_model(_model(), str(tmp_path / "a"), extra={"model": {}})
    with pytest.raises(ValueError, match="config.json"):
        save_model(_model(), str(tmp_path / "a"), files={"config.json": lambda p: None})
    with pytest.raises(ValueError, match="plain file name"):
        save_model(_model(), str(tmp_path / "a"), files={"x/tokenizer.json": lambda p: None})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="current working directory"):
        save_model(_model(), ".")
    assert os.listdir(tmp_path) == []


# ---- config.json is bound to its weights --------------------------------------------------------

def test_weights_from_another_save_are_refused_naming_both_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_model(_model(0), str(a))
    save_model(_model(1), str(b))
    shutil.copyfile(b / "model.safetensors", a / "model.safetensors")             # same keys and shapes
    with pytest.raises(ValueError, match=r"a/model\.safetensors does not belong with .*a/config\.json"):
        load_model(str(a))
    _drop_sha(a)                                                                  # an older config: no binding
    assert torch.equal(load_model(str(a)).lm_head.weight, _model(1).lm_head.weight)


@settings(max_examples=25)
@given(pos=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_no_single_bit_flip_in_the_weights_loads_quietly(tmp_path_factory, pos, bit):
    ck = tmp_path_factory.mktemp("ck")
    m = GPT(GPTConfig(vocab_size=11, n_layer=1, n_head=1, n_embd=8, block_size=8))
    save_model(m, str(ck))
    path = ck / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[int(pos * len(data))] ^= 1 << bit
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(str(ck))


def test_the_shipped_checkpoints_still_load():
    from minift.pretrain import BASE_DIR, size_dir
    for folder in [BASE_DIR, *(size_dir(s) for s in ("tiny", "small"))]:
        before = (folder / "model.safetensors").read_bytes()
        m = load_model(str(folder))
        assert torch.isfinite(m(torch.zeros(1, 4, dtype=torch.long)).logits).all()
        assert (folder / "model.safetensors").read_bytes() == before


# ---- tied parameters: a file may not give them two values ---------------------------------------

def _with_head(folder, head):
    """Rewrite folder's weights with an explicit lm_head.weight, config re-bound to them."""
    path = str(folder / "model.safetensors")
    sd = load_tensors(path)
    sd["lm_head.weight"] = head
    save_tensors(sd, path)
    cfg = load_json(str(folder / "config.json"))
    cfg["weights_sha256"] = file_sha256(path)
    save_json(cfg, str(folder / "config.json"))


@settings(max_examples=20)
@given(vocab=st.integers(2, 40), seed=st.integers(0, 2 ** 16), row=st.floats(0, 1, exclude_max=True),
       col=st.integers(0, 7), delta=st.sampled_from([1e-6, -1e-3, 0.5, 7.0]), same=st.booleans())
def test_a_differing_lm_head_is_refused_and_an_equal_one_loads(tmp_path_factory, vocab, seed, row, col, delta, same):
    ck = tmp_path_factory.mktemp("ck")
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=vocab, n_layer=1, n_head=1, n_embd=8, block_size=8))
    save_model(m, str(ck))
    head = m.transformer.wte.weight.detach().clone()
    if not same:
        head[int(row * vocab), col] += delta
        assert not torch.equal(head, m.transformer.wte.weight)                   # float32 keeps each delta
    _with_head(ck, head)
    if same:
        m2 = load_model(str(ck))
        assert torch.equal(m2.lm_head.weight, m.lm_head.weight) and m2.lm_head.weight is m2.transformer.wte.weight
    else:
        with pytest.raises(ValueError, match=r"'(transformer\.wte|lm_head)\.weight' and '(lm_head|transformer\.wte)"
                                             r"\.weight' with different values, but the model ties them"):
            load_model(str(ck))


def test_tied_keys_are_found_by_storage_not_by_name(tmp_path):
    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(3, 3), nn.Linear(3, 3)
            self.dec.weight = self.enc.weight                                       # tied under other names
    m = Twin()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    sd["dec.weight"] = sd["dec.weight"] + 1
    with pytest.raises(ValueError, match=r"'enc\.weight' and 'dec\.weight' .* ties them"):
        load_state_dict_strict(m, sd, source="twin.safetensors")
    sd["dec.weight"] = sd["enc.weight"].clone()
    load_state_dict_strict(m, sd, source="twin.safetensors")                    # equal values: accepted
    del sd["enc.weight"]                                                         # either name will do
    load_state_dict_strict(m, sd, source="twin.safetensors")


def test_load_trainable_refuses_a_differing_tied_key_and_frozen_tensors(tmp_path):
    m = _model()
    for n, p in m.named_parameters():
        p.requires_grad = n == "transformer.wte.weight"
    path = str(tmp_path / "emb.safetensors")
    save_trainable(m, path)
    sd = load_tensors(path)
    save_tensors({**sd, "lm_head.weight": sd["transformer.wte.weight"] * 2}, path)
    with pytest.raises(ValueError, match=r"'transformer\.wte\.weight' and 'lm_head\.weight'.* ties them"):
        load_trainable(m, path)
    save_tensors({**sd, "lm_head.weight": sd["transformer.wte.weight"].clone()}, path)
    load_trainable(m, path)                                                       # equal: accepted
    save_tensors({**sd, "transformer.ln_f.bias": torch.ones(8)}, path)            # a frozen tensor
    with pytest.raises(ValueError, match=r"unexpected keys \['transformer\.ln_f\.bias'\]"):
        load_trainable(m, path)
    assert not m.transformer.ln_f.bias.eq(1).all()                               # and it was not loaded


def test_an_interrupted_adapter_save_leaves_the_old_adapter(tmp_path, monkeypatch):
    from minift.peft import io
    from minift.peft.lora import LoRAConfig, apply_lora
    m = _model()
    apply_lora(m, LoRAConfig(r=2))
    io.save_adapter(m, str(tmp_path / "ad"))
    before = _snapshot(tmp_path / "ad")

    def boom(obj, path):
        raise KeyboardInterrupt
    monkeypatch.setattr(io, "save_json", boom)
    with torch.no_grad():
        next(p for n, p in m.named_parameters() if "lora_B" in n).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        io.save_adapter(m, str(tmp_path / "ad"))
    assert _snapshot(tmp_path / "ad") == before and os.listdir(tmp_path) == ["ad"]
