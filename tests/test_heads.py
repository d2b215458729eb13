"""Task heads: last-real-token pooling, padding side and batch composition, NER labels."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.heads import (SequenceClassifier, TokenClassifier, encode_classification, encode_ner,
                          encode_words, last_real_index, predict_sequence, predict_tags, predicted_classes)
from minift.model import GPTConfig
from minift.tasks import collate
from strategies import gpt_configs, tiny_model

pytestmark = pytest.mark.lesson02
SET = settings(deadline=None, max_examples=25)


def _rows(cfg, lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in lens]


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_sequence_head_is_invariant_to_padding_side_and_batch_composition(cfg, data):
    clf = SequenceClassifier(tiny_model(cfg), 3).double().eval()
    lens = data.draw(st.lists(st.integers(1, cfg.block_size), min_size=1, max_size=4))
    rows = _rows(cfg, lens, data.draw(st.integers(0, 50)))
    alone = torch.cat([clf(r[None]).logits for r in rows])                       # (B, K)
    for side in ("left", "right"):
        b = collate([{"idx": r} for r in rows], pad_id=0, side=side)
        torch.testing.assert_close(clf(b["idx"], b["attention_mask"]).logits, alone, atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_token_head_is_invariant_to_padding_side_and_batch_composition(cfg, data):
    tc = TokenClassifier(tiny_model(cfg), 4).double().eval()
    lens = data.draw(st.lists(st.integers(1, cfg.block_size), min_size=1, max_size=4))
    rows = _rows(cfg, lens, data.draw(st.integers(0, 50)))
    for side in ("left", "right"):
        b = collate([{"idx": r} for r in rows], pad_id=0, side=side)
        out = tc(b["idx"], b["attention_mask"]).logits
        T = b["idx"].shape[1]
        for i, r in enumerate(rows):
            sl = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
            torch.testing.assert_close(out[i, sl], tc(r[None]).logits[0], atol=1e-10, rtol=1e-10)


@settings(deadline=None, max_examples=50)
@given(mask=st.lists(st.lists(st.booleans(), min_size=5, max_size=5).filter(any), min_size=1, max_size=4))
def test_last_real_index_is_the_largest_real_position(mask):
    m = torch.tensor(mask, dtype=torch.long)
    expected = [max(i for i, v in enumerate(row) if v) for row in mask]
    assert last_real_index(m, *m.shape, "cpu").tolist() == expected


def test_padding_labels_never_count_and_token_loss_ignores_minus_100():
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)
    tc = TokenClassifier(tiny_model(cfg), 3).double().eval()
    idx = torch.randint(0, 20, (1, 6))
    labels = torch.tensor([[0, 1, -100, 2, 0, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    loss = tc(idx, mask, labels).loss
    logp = torch.log_softmax(tc(idx, mask).logits[0], -1)
    expected = -(logp[0, 0] + logp[1, 1] + logp[3, 2]) / 3                     # positions 0, 1, 3 only
    torch.testing.assert_close(loss, expected)


def test_bad_labels_and_shapes_raise():
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8)
    clf = SequenceClassifier(tiny_model(cfg), 2).double()
    idx = torch.randint(0, 20, (2, 5))
    with pytest.raises(ValueError, match=r"label 2 is outside the head's classes \[0, 2\)"):
        clf(idx, labels=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels must have shape"):
        clf(idx, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="n_classes=1 must be an integer >= 2"):
        SequenceClassifier(tiny_model(cfg), 1)
    with pytest.raises(ValueError, match="no examples"):
        encode_classification(None, [], ["text"], 8)


class _WordTok:
    """A toy tokenizer: one token per character, so multi-token words are common."""
    eos_id = 0

    def encode(self, s):
        return [1 + (ord(c) % 50) for c in s]


def test_ner_labels_sit_on_each_words_first_token():
    tok = _WordTok()
    ids, labels, first = encode_words(tok, ["Mara", "lives", "in", "Old", "Mill"], [1, 0, 0, 3, 4])
    assert first == [0, 4, 10, 13, 17]                                          # " lives" is 6 chars
    assert [labels[p] for p in first] == [1, 0, 0, 3, 4]
    assert sum(l != -100 for l in labels) == 5 and len(ids) == len(labels)
    with pytest.raises(ValueError, match=r"tag\(s\) \['B-XYZ'\] not in"):
        encode_ner(tok, [{"tokens": ["a"], "tags": ["B-XYZ"]}], ["O", "B-PER"], 16)


def test_ner_splits_cut_val_and_test_and_keep_train_whole():
    from minift import world
    from minift.heads import ner_splits
    from minift.pretrain import load_base
    _, tok = load_base()
    ex, items, train_items = ner_splits(tok, 128, n_eval=5, dev_key="dev")
    assert set(ex) == {"train", "dev", "test"} and len(ex["dev"]) == len(ex["test"]) == 5
    assert ex["dev"] == world.task("ner", "val")[:5] and len(ex["train"]) == len(world.task("ner", "train"))
    assert len(train_items) == len(ex["train"]) and set(train_items[0]) == {"idx", "labels"}
    assert torch.equal(train_items[0]["idx"], items["train"][0]["idx"])


def test_predictions_run_where_the_model_is_and_come_back_on_the_cpu(device):
    """predict_sequence, predicted_classes and predict_tags take CPU items (as encode_* makes them) and move
    each collated batch to the model's device (lessons 02-10 with --device cuda); they give each row's own
    argmax, computed here one row at a time on the CPU, and the classes come back on the CPU."""
    cfg = GPTConfig(vocab_size=32, block_size=12, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    clf, tc = SequenceClassifier(tiny_model(cfg), 3).double().eval(), TokenClassifier(tiny_model(cfg), 4).double().eval()
    rows = _rows(cfg, [5, 12, 1, 7])
    items = [{"idx": r, "labels": torch.zeros_like(r), "first": list(range(0, len(r), 2))} for r in rows]
    with torch.no_grad():
        want_seq = [int(clf(r[None]).logits.argmax(-1)) for r in rows]
        want_cls = [tc(r[None]).logits.argmax(-1)[0] for r in rows]                # (T_i,) each
    col = lambda b: collate(b, pad_id=0)  # noqa: E731
    clf.to(device), tc.to(device)
    assert predict_sequence(clf, items, col, batch_size=3) == want_seq
    got = list(predicted_classes(tc, items, col, batch_size=3))
    assert [it is x for (it, _), x in zip(got, items)] == [True] * 4
    for (_, pred), want in zip(got, want_cls):
        assert pred.device.type == "cpu" and torch.equal(pred, want)
    names = ["O", "A", "B", "C"]
    assert predict_tags(tc, items, col, names, batch_size=3) == [[names[int(w[p])] for p in it["first"]]
                                                                 for it, w in zip(items, want_cls)]
