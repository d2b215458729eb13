"""Lesson 03 exercise: the loss mask and the loss of supervised fine-tuning.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 03`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain Python and PyTorch tensor operations. Do not call F.cross_entropy,
F.log_softmax, torch.logsumexp or minift itself: writing them is the point.
"""
import torch  # noqa: F401


def run_response_loss_mask(prompt_len, response_len, train_on_prompt=False):
    """Which training targets of one instruction example take loss.

    An example is laid out in token space as

        ids = [<|prompt|>] prompt [<|response|>]  response  [<|endoftext|>]
              \\_____ prompt_len ids _________/  response_len   1 EOS

    so it has prompt_len + response_len + 1 ids (prompt_len >= 2 counts both markers;
    response_len >= 0 does not count the EOS). The model reads ids[:-1] and is trained to
    predict targets = ids[1:]: prompt_len + response_len targets. Return one 0/1 int per
    target:

        1  if the target is a response token or the final EOS   (the model must learn to say it)
        0  if the target is still inside the prompt               (context, not something to imitate)

    i.e. [0] * (prompt_len - 1) + [1] * (response_len + 1). Careful with the shift: target t is
    ids[t + 1], so the target of the <|response|> position is the first response token (1),
    and the EOS must be trained, or the model never learns to stop.

    train_on_prompt=True is the ablation of the lesson: every target takes loss (all ones).
    Returns a list of ints.
    """
    raise NotImplementedError("run_response_loss_mask: not written yet; its docstring and "
                              "lessons/03_instruction_tuning/README.md, \"The maths\", say what it computes")


def run_sft_loss(logits, targets):
    """The SFT loss of a padded batch: cross-entropy over the response tokens only.

        L = -(1/N) sum over (b, t) with targets[b, t] != -100 of log softmax(logits[b, t])[targets[b, t]]
          =  (1/N) sum  ( logsumexp(logits[b, t]) - logits[b, t, targets[b, t]] )

    targets are already shifted (targets[b, t] is the token that follows position t) and hold
    -100 wherever no loss is taken: prompt positions and padding. N is the number of targets
    that are not -100 in the *whole batch*: one token-weighted mean, so a 10-token response
    weighs ten times a 1-token one (NOT the mean of per-sequence means).

    logits: (B, T, V) float32; targets: (B, T) int64 in [0, V) or -100. Returns a scalar tensor;
    0.0 (not NaN) when every target is -100. Must be stable for large logits (|logits| up to
    1e4: shift by the row max before exp).
    """
    raise NotImplementedError("run_sft_loss: not written yet; its docstring and "
                              "lessons/03_instruction_tuning/README.md, \"The maths\", say what it computes")
