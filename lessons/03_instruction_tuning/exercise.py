"""Lesson 03 exercise: the loss mask and the loss of supervised fine-tuning.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 03`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain Python and PyTorch tensor operations. Do not call F.cross_entropy,
F.log_softmax, torch.logsumexp or minift itself: writing them is the point.
"""

import torch  # noqa: F401


def run_response_loss_mask(prompt_len, response_len, train_on_prompt=False):
    r"""Which training targets of one instruction example take loss.

    An example is laid out in token space as

        s = [<|prompt|>] prompt [<|response|>]  response  [<|endoftext|>]
            \_____ P = prompt_len ids ______/  n = response_len   1 EOS

    so it has P + n + 1 ids s_0 .. s_{P+n} (P >= 2 counts both markers; n >= 0 does not count
    the EOS). The model reads s_0 .. s_{P+n-1} and is trained to predict the next id: target t
    (t = 0 .. P + n - 1) is s_{t+1}. Return one 0/1 int per target:

        mask_t = 1  if s_{t+1} is a response token or the final EOS   (the model must learn to say it)
        mask_t = 0  if s_{t+1} is still part of the prompt             (context, not something to imitate)

    Careful with the shift: the target of the <|response|> position is the first response
    token, and the EOS must be trained, or the model never learns to stop.
    train_on_prompt=True is the ablation of the lesson: every target takes loss.
    Returns a list of P + n ints.
    """
    raise NotImplementedError("run_response_loss_mask: not written yet; lessons/03_instruction_tuning/README.md, "
                              "\"The maths\", equation (3.3), says what it computes")


def run_sft_loss(logits, targets):
    """The SFT loss of a padded batch: cross-entropy over the response tokens only.

        L = (1/N) sum over (b, t) with y_{b,t} != -100 of ( log sum_v exp z_{b,t,v} - z_{b,t,y_{b,t}} )

    with z = logits and y = targets. The targets are already shifted (y_{b,t} is the token that
    follows position t) and hold -100 wherever no loss is taken: prompt positions and padding.
    N is the number of targets that are not -100 in the *whole batch*: one token-weighted mean,
    so a 10-token response weighs ten times a 1-token one (NOT the mean of per-sequence means).

    logits: (B, T, V) float32; targets: (B, T) int64 in [0, V) or -100. Returns a scalar tensor;
    0.0 (not NaN) when every target is -100. Must be stable for large logits (|z| up to 1e4:
    subtract each row's maximum before exponentiating).
    """
    raise NotImplementedError("run_sft_loss: not written yet; lessons/03_instruction_tuning/README.md, "
                              "\"The maths\", equation (3.4), says what it computes")



def run_format_instruction(example, style="full"):
    """The prompt of one Natural-Instructions example, with or without its instruction (README,
    part 6, equation (3.5)).

    example has the fields "task" (the type's name), "definition", "positive" and "negative" (each
    {"input", "output", "reason"}), "input" and "output". Return (prompt, response):

        style="full":   the four lines
                            Definition: <definition>
                            Positive example. Input: <pi> Output: <po> Reason: <pr>
                            Negative example. Input: <ni> Output: <no> Reason: <nr>
                            Now do the task. Input: <input>
                        joined by "\n" (no newline at the end);
        style="name":   "Task: <task>", a newline, then "Input: <input>"  (FLAN's task-name ablation);
        style="plain":  "Input: <input>" alone                            (input -> output, no instruction).

    The response is example["output"] in every style: only the prompt is stripped.
    """
    raise NotImplementedError("run_format_instruction: not written yet; lessons/03_instruction_tuning/README.md, "
                              "\"6. Instructions or plain input to output (`--plain`)\", equation (3.5), says what it computes")


def run_encode_chat(turns, max_len=None, last_turn_only=False):
    """The token ids and loss mask of a dialogue (README, part 5, equation (3.6)), on token ids.

    turns: a list of (user_ids, assistant_ids), lists of content ids (>= 4). The markers are
    <|prompt|> = 2, <|response|> = 3 and <|endoftext|> = 0. Turn (u, a) becomes

        [2] + u + [3] + a + [0]          with mask  0 on [2] + u + [3],  1 on a + [0]

    (the user's words are context; the reply and its end-of-turn token are trained), and the
    dialogue is the turns end to end. last_turn_only=True: the mask is 0 on every turn but the
    last. max_len (None: no limit): while the ids are longer than max_len, drop the oldest *whole*
    turn; if the last turn alone is longer than max_len, raise ValueError.
    Returns (ids, mask), two lists of ints of the same length.
    """
    raise NotImplementedError("run_encode_chat: not written yet; lessons/03_instruction_tuning/README.md, "
                              "\"5. Chat: several turns, the loss on the assistant's (`--chat`)\", equation (3.6), "
                              "says what it computes")


# ---- try it ----

def try_sft(steps=150, tasks="instructions", n_per_task=300, train_on_prompt=False, lr=2e-3, n_eval=24):
    """A small SFT run from the shipped base model (README exercises 4 and 5), under a minute of
    CPU: `steps` steps of batch 4 on a mixture of `tasks` (comma-separated task names, at most
    n_per_task examples each), the loss on the response only unless train_on_prompt. Prints
    exact match on n_eval examples of the seen instruction types (val) and of the three unseen
    ones (test), with a few answers. 150 steps only start to learn the format; the walkthrough's
    300-step run is the full-size version. Change tasks, steps, n_per_task, train_on_prompt or
    lr and compare."""
    from minift import world
    from minift.evals import evaluate_task, mixture
    from minift.pretrain import load_base
    from minift.tasks import SFTDataset, collate_fn
    from minift.train import TrainConfig, train
    model, tok = load_base()
    data = SFTDataset(tok, mixture(tasks.split(","), "train", n_per_task), model.config.block_size,
                      train_on_prompt=train_on_prompt)
    train(model, data, TrainConfig(steps=steps, batch_size=4, lr=lr, progress=False),
          collate_fn=collate_fn(tok.pad_id))
    for split, name in (("val", "seen types"), ("test", "unseen types")):
        by_type: dict = {}
        for ex in world.task("instructions", split):
            by_type.setdefault(ex["task"], []).append(ex)
        exs = [ex for i in range(n_eval) for group in by_type.values() if i < len(group)
               for ex in [group[i]]][:n_eval]                                # round robin over the types
        r = evaluate_task(model, tok, "instructions", exs, max_new_tokens=20)
        print(f"{name} ({split}, {len(exs)} examples): exact match {r['score']:.2f}")
        for ex, got in list(zip(exs, r["responses"]))[:3]:
            print(f"  [{ex['task']}] gold {ex['output']!r:<20} got {got!r}")


def try_plain(style="plain", steps=150, lr=1e-3, n_eval=24):
    """README part 6 at toy size, with YOUR run_format_instruction (exercise 6) writing the prompts:
    `steps` steps of batch 4 on the training instructions written in `style` ("full", "name" or
    "plain") + 300 closed-book questions, then exact match on n_eval seen (val) and unseen (test)
    examples, prompted in `style` and with the full instructions. A step of style=full costs several
    times one of style=plain (its prompts are about 20 times longer). Run it for two styles with the
    same steps and compare."""
    from minift import world
    from minift.evals import generate_responses, mixture
    from minift.pretrain import load_base
    from minift.tasks import SFTDataset, collate_fn, exact_match
    from minift.train import TrainConfig, train
    model, tok = load_base()
    pairs = [run_format_instruction(e, style) for e in world.task("instructions", "train")]
    data = SFTDataset(tok, pairs + mixture(["qa_closed"], "train", 300), model.config.block_size)
    train(model, data, TrainConfig(steps=steps, batch_size=4, lr=lr, progress=False), collate_fn=collate_fn(tok.pad_id))
    for split, name in (("val", "seen types"), ("test", "unseen types")):
        exs = world.task("instructions", split)[:n_eval]
        for prompted in dict.fromkeys((style, "full")):
            got = generate_responses(model, tok, [run_format_instruction(e, prompted)[0] for e in exs], 24)
            em = sum(exact_match(g, e["output"]) for g, e in zip(got, exs)) / len(exs)
            print(f"{name} ({split}, {len(exs)} examples), prompted {prompted}: exact match {em:.2f}; "
                  f"first answers {got[:3]}")


if __name__ == "__main__":         # python lessons/03_instruction_tuning/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
