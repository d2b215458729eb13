"""SFT: the loss covers the response and its EOS, never the prompt or padding."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.sft import SFTConfig, Template, train_sft
from minift.evals import mixture, score
from minift.model import GPTConfig
from minift.tasks import SFTDataset, collate
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson03
SET = settings(deadline=None, max_examples=40)
WORDS = st.text(alphabet="abcdef ", min_size=1, max_size=12)



TOK = CharTok()
MODEL = tiny_model(GPTConfig(vocab_size=24, block_size=40, n_layer=1, n_head=2, n_embd=8))


def _loss(items, side="right"):
    b = collate(items, pad_id=TOK.pad_id, side=side)
    return MODEL(b["idx"], b["targets"], attention_mask=b["attention_mask"]).loss


@SET
@given(prompt=WORDS, response=WORDS, other=WORDS)
def test_targets_cover_exactly_the_response_and_eos(prompt, response, other):
    item = SFTDataset(TOK, [(prompt, response)], 40)[0]
    kept = item["targets"][item["targets"] != -100].tolist()
    assert kept == TOK.encode(response) + [TOK.eos_id]                    # response + EOS, in order
    # the prompt's own tokens are never a target: the loss over a batch equals the response-only
    # cross-entropy written out by hand
    logp = torch.log_softmax(MODEL(item["idx"][None]).logits[0], -1)
    pos = (item["targets"] != -100).nonzero().flatten()
    expected = -logp[pos, item["targets"][pos]].mean()
    torch.testing.assert_close(_loss([item]), expected, atol=1e-10, rtol=1e-10)


@SET
@given(prompt=WORDS, response=WORDS, other=WORDS, pad=st.integers(1, 6))
def test_padding_and_batch_neighbours_do_not_change_an_examples_loss(prompt, response, other, pad):
    a = SFTDataset(TOK, [(prompt, response)], 40)[0]
    longer = SFTDataset(TOK, [(other + " " * pad, other)], 40)[0]          # forces padding of a
    # mean over the union of response tokens: compare the per-token NLL sums instead
    def nll_sum(items, side):
        b = collate(items, pad_id=TOK.pad_id, side=side)
        lg = MODEL(b["idx"], attention_mask=b["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(lg[0], b["targets"][0], ignore_index=-100, reduction="sum")
    alone = nll_sum([a], "right")
    for side in ("left", "right"):
        torch.testing.assert_close(nll_sum([a, longer], side), alone, atol=1e-10, rtol=1e-10)


@SET
@given(prompt=WORDS, response=WORDS)
def test_without_the_mask_the_prompt_is_trained_on(prompt, response):
    masked = SFTDataset(TOK, [(prompt, response)], 40)[0]["targets"]
    full = SFTDataset(TOK, [(prompt, response)], 40, train_on_prompt=True)[0]["targets"]
    assert bool((full != -100).all()) and int((masked != -100).sum()) == len(response) + 1


def test_templates_and_mixtures():
    t = Template(prompt="Question: {question}", response="{answer}")
    assert t.render({"question": "Where?", "answer": "Here"}) == ("Question: Where?", "Here")
    with pytest.raises(ValueError, match="has no slot"):
        Template(prompt="Q: {question}", response="always this")
    with pytest.raises(ValueError, match=r"lacks field\(s\) \['answer'\]"):
        t.render({"question": "Where?"})
    mx = mixture(["qa_closed", "sentiment"], n_per_task=5)
    assert len(mx) == 10 and mx == mixture(["qa_closed", "sentiment"], n_per_task=5)   # seeded
    with pytest.raises(ValueError, match="at least one task"):
        mixture([])
    with pytest.raises(ValueError, match="no examples"):
        SFTDataset(TOK, [], 40)


def test_scores_use_the_tasks_metric():
    ex = [{"question": "q", "answer": "Brookfield"}, {"question": "q", "answer": "Oakby"}]
    assert score("qa_closed", ["brookfield.", "Ashford"], ex) == 0.5          # EM normalises case
    sent = [{"text": "x", "label": 1}, {"text": "y", "label": 0}]
    assert score("sentiment", ["positive", "maybe"], sent) == 0.5             # unparsable = wrong


def test_train_sft_learns_the_responses_deterministically():
    pairs = [("ab", "cd"), ("ef", "ab"), ("cc", "fe"), ("da", "bb")]
    cfg = GPTConfig(vocab_size=24, block_size=40, n_layer=1, n_head=2, n_embd=8)
    runs = []
    for _ in range(2):
        model = tiny_model(cfg, dtype=torch.float32)
        hist = train_sft(model, pairs, SFTConfig(), TrainConfig(steps=30, batch_size=4, lr=3e-2, progress=False), tok=TOK)
        runs.append([h["loss"] for h in hist])
    assert runs[0] == runs[1] and runs[0][-1] < 0.5 * runs[0][0]
    # the loss counts response tokens only; with train_on_prompt it counts the prompt too
    assert hist[0]["tokens"] == 4 * 3
    full = train_sft(tiny_model(cfg, dtype=torch.float32), pairs, SFTConfig(train_on_prompt=True),
                     TrainConfig(steps=1, batch_size=4, progress=False), tok=TOK)
    assert full[0]["tokens"] > hist[0]["tokens"]
    with pytest.raises(TypeError, match="SFTConfig"):
        train_sft(model, pairs, {"train_on_prompt": False}, TrainConfig(steps=1), tok=TOK)
    with pytest.raises(TypeError, match="TrainConfig"):
        train_sft(model, pairs, SFTConfig(), {"steps": 1}, tok=TOK)
    with pytest.raises(TypeError, match="train_on_prompt"):
        SFTConfig(train_on_prompt=1)
