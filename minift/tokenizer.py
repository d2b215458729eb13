r"""Byte-level BPE (Sennrich et al., 2016; GPT-2's byte-level variant), trained with `tokenizers`.

Byte-level means the base alphabet is the 256 byte values, so *every* string encodes, nothing is
ever unknown, and decode(encode(s)) == s for any Unicode text.

Four special tokens:

    <|endoftext|>   end of a document / of a response (EOS)
    <|pad|>         padding (never trained on: its targets are -100)
    <|prompt|>      starts the prompt (instruction) part of an example
    <|response|>    starts the response part

An instruction example is laid out in *token space*:

    [<|prompt|>] encode(prompt) [<|response|>] encode(response) [<|endoftext|>]
     \______________ prompt ids: mask 0 ______/ \_____ response: mask 1 _______/

Building it from token lists (not by encoding a concatenated string) guarantees that the
prompt's tokens are an exact prefix of the full sequence, so what the model is conditioned on
at generation time is exactly what it was trained on. The loss mask is positional: the EOS that
ends the response is trained (mask 1) whatever its id, and no token is masked by its id.
"""
from __future__ import annotations

import os
from typing import Iterable

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOS, PAD, PROMPT, RESPONSE = "<|endoftext|>", "<|pad|>", "<|prompt|>", "<|response|>"
SPECIAL_TOKENS = (EOS, PAD, PROMPT, RESPONSE)


class Tokenizer:
    def __init__(self, hf: _HFTokenizer):
        self._tok = hf
        ids = {s: hf.token_to_id(s) for s in SPECIAL_TOKENS}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special token(s) {missing}; expected all of {list(SPECIAL_TOKENS)}")
        self.eos_id, self.pad_id = ids[EOS], ids[PAD]
        self.prompt_id, self.response_id = ids[PROMPT], ids[RESPONSE]

    # ---- training, saving, loading -----------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> "Tokenizer":
        """Learn a byte-level BPE of vocab_size tokens (specials included) from texts."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={vocab_size} must be at least {256 + len(SPECIAL_TOKENS)} "
                             f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")
        tok = _HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    def save(self, path: str) -> None:
        from .checkpoint import _atomic_write
        _atomic_write(path, lambda tmp: self._tok.save(tmp))

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer file {path} not found")
        try:
            hf = _HFTokenizer.from_file(path)
        except Exception as e:  # tokenizers raises its own Exception subclass on bad JSON
            raise ValueError(f"{path} is not a tokenizers JSON file ({e})") from None
        return cls(hf)

    # ---- encoding ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of text; no special token is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def encode_prompt(self, prompt: str) -> list[int]:
        """[<|prompt|>] prompt [<|response|>]: what generation is conditioned on."""
        return [self.prompt_id] + self.encode(prompt) + [self.response_id]

    @staticmethod
    def response_text(response: str) -> str:
        """The text a response is encoded as: with one leading space unless it is empty or already
        starts with whitespace. Byte-level BPE has separate tokens for a word at the start of a text
        and after a space (" parrot" is one token, "parrot" three rare pieces), and in the
        pretraining corpus an answer word always follows a space, so that is how it is encoded.
        Generated responses are compared after .strip(), so the space never counts."""
        return response if not response or response[0].isspace() else " " + response

    def encode_pair(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) for prompt+response; mask 1 on the response tokens and the final EOS.
        encode_prompt(prompt) is always an exact prefix of ids; the response is encoded as
        response_text(response) (a leading space, see there)."""
        p = self.encode_prompt(prompt)
        r = self.encode(self.response_text(response)) + [self.eos_id]
        return p + r, [0] * len(p) + [1] * len(r)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id})"
