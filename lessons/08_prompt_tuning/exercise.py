"""Lesson 08 exercise: the four rules that make prompt tuning correct, as plain functions.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 08`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional; indexing, torch.cat, cumsum are all fine); do
not call minift in the run_* functions.

The try_* functions at the bottom are complete starters for the README's "try" exercises; they use
minift. Run one with `python lessons/08_prompt_tuning/exercise.py try_positions_overlap`.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_soft_prompt(embeds, prompt, attention_mask):
    """Prepend the soft prompt P to every row, and tell the attention mask about it:

        inputs_embeds  = [P ; embeds]        (B, n + T, C)   the same n rows of P in front of every row b
        attention_mask = [1 ... 1 ; mask]    (B, n + T)      the n virtual tokens count as real tokens

    embeds: (B, T, C) float; prompt: (n, C) float, n may be 0 (then both come back unchanged);
    attention_mask: (B, T) of 0/1 (padding may be anywhere). Return the pair (inputs_embeds,
    attention_mask); the values of P and embeds must come through unchanged, bit for bit.
    """
    raise NotImplementedError("run_soft_prompt: not written yet; lessons/08_prompt_tuning/README.md, "
                              "\"The maths\", equation (8.1), says what it computes")


def run_prompt_init_from_text(token_embeds, n):
    """The "text" initialisation of an n-vector prompt from a text's m token embeddings E (m, C):

        P_i = E_(i mod m)        for i = 0 .. n-1                  P: (n, C)

    so a text longer than the prompt is cut to its first n tokens, and a shorter one is repeated
    (t0 t1 t2 t0 t1 ... for m = 3). An empty text (m = 0) or n < 1 must raise ValueError.
    """
    raise NotImplementedError("run_prompt_init_from_text: not written yet; lessons/08_prompt_tuning/README.md, "
                              "\"The maths\", equation (8.7), says what it computes")


def run_prompt_positions(attention_mask, n):
    """The learned-position index GPT-2 gives every slot of the prompted sequence [P ; tokens]:

        virtual token i:            position i,  i = 0 .. n-1
        real token (mask 1) at t:   position n + (the number of real tokens before t in its row)

    attention_mask: (B, T) of 0/1. Returns an integer tensor (B, n + T). The value at a padding
    slot does not matter (the model never attends to it). This is the rule that makes a prompt
    initialised from a text exactly the same as typing that text in front.
    """
    raise NotImplementedError("run_prompt_positions: not written yet; lessons/08_prompt_tuning/README.md, "
                              "\"The maths\", equation (8.2), says what it computes")


def run_prompt_loss(logits, targets, n):
    """The training loss of a prompted forward, with nothing shifted:

        loss = mean over the (b, t) whose target y_bt is not -100 of  −log softmax(z_b,n+t)_(y_bt)

    where z_b,s (V,) is the logits row of slot s of row b. logits: (B, n + T, V), the model's
    output over [P ; tokens]; targets y: (B, T) integer, the caller's targets for the real tokens
    only (y_bt is the token that follows token t, or -100). The n virtual slots have no target:
    their logits must not change the loss. Returns a scalar tensor.
    """
    raise NotImplementedError("run_prompt_loss: not written yet; lessons/08_prompt_tuning/README.md, "
                              "\"The maths\", equation (8.6), says what it computes")


# ---- starters for the README's "try" exercises (complete; they use minift) ----

TEXT = "Find the people, towns, pets and foods in each sentence."      # the walkthrough's "text" init


def try_positions_overlap(text=TEXT, sentence=" Hovan walked to Brookby with a pony"):
    """Exercise 5: a prompt initialised from `text`, read two ways. (a) minift's rule (P at
    0..n-1, the tokens at n..n+T-1) against the base model on the typed text followed by the
    sentence; (b) the variant where the tokens keep positions 0..T-1, built by giving GPT.forward
    each token's row + W_pe[t] - W_pe[n + t] (it adds W_pe[n + t] itself). Prints the max |logit
    difference| of each against the typed text, at the sentence's tokens. A few seconds."""
    from minift.pretrain import load_base
    base, tok = load_base()
    t, x = tok.encode(text), tok.encode(sentence)
    n, T = len(t), len(x)
    wte, wpe = base.transformer.wte.weight, base.transformer.wpe.weight
    with torch.no_grad():
        typed = base(torch.tensor([t + x])).logits[:, n:]                   # the base model on text + sentence
        P = wte[torch.tensor(t)]                                            # the text init, n = m
        rows = wte[torch.tensor(x)]
        ours = base(inputs_embeds=torch.cat([P, rows])[None]).logits[:, n:]
        shift = wpe[torch.arange(T)] - wpe[torch.arange(n, n + T)]          # move token t back to position t
        overlap = base(inputs_embeds=torch.cat([P, rows + shift])[None]).logits[:, n:]
    print(f"text of n = {n} tokens, sentence of T = {T}:")
    print(f"  (a) tokens at n..n+T-1 (minift):  max |logits - typed text| = {(ours - typed).abs().max():.2e}")
    print(f"  (b) tokens at 0..T-1 (overlap):   max |logits - typed text| = {(overlap - typed).abs().max():.2f}")
    return (ours - typed).abs().max().item(), (overlap - typed).abs().max().item()


def try_crowd_direction(n_texts=64):
    """Exercise 6, first half: the crowd of part 3 (vocabulary rows within cosine 0.95 of the mean
    row, mu) and the cosine between mu and the mean final hidden state (after LN_f) over the first
    n_texts documents of the pretraining corpus's val split. Returns (crowd mask (V,), mu, cosine)."""
    from minift import world
    from minift.pretrain import load_base
    base, tok = load_base()
    wte = base.transformer.wte.weight.detach().double()
    mu = F.normalize(wte.mean(0), dim=0)
    crowd = F.normalize(wte, dim=-1) @ mu > 0.95                           # (V,)
    states = []
    with torch.no_grad():
        for doc in world.pretrain_corpus("val")[:n_texts]:
            ids = tok.encode(doc)[:base.config.block_size]
            states.append(base(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0])
    h = torch.cat(states).double().mean(0)                                  # mean final hidden state (C,)
    cos = float(F.normalize(h, dim=0) @ mu)
    print(f"{int(crowd.sum())} of {len(crowd)} vocabulary rows are in the crowd; cos(mean final hidden state, "
          f"crowd direction) = {cos:+.3f} over {len(states)} documents")
    return crowd, mu, cos


def try_prompt_from_ids(ids=None, n=16, steps=100, lr=3e-1, seed=0):
    """Exercise 6, second half: train one prompt (PromptConfig(n_tokens=n, init="text",
    init_ids=ids)) on the lesson's NER task with the walkthrough's data, steps, batch, rate and seed,
    and print dev and test F1. ids=None draws n token ids outside the crowd (seeded). About 9 s of
    CPU time at 100 steps; steps=20 for a quick look (its F1 means little)."""
    from minift import course
    from minift.heads import ner_splits
    from minift.peft.prompt import PromptConfig, apply_prompt
    from minift.pretrain import load_base
    torch.set_num_threads(1)                                             # as the walkthrough (course.start)
    _, tok = load_base()
    if ids is None:
        crowd, _, _ = try_crowd_direction(n_texts=8)
        outside = torch.nonzero(~crowd).flatten()
        g = torch.Generator().manual_seed(seed)
        ids = outside[torch.randperm(len(outside), generator=g)[:n]].tolist()
    print(f"init tokens: {[tok.decode([i]) for i in ids]}")
    cfg = PromptConfig(n_tokens=n, init="text", init_ids=list(ids))

    def apply(clf, c):
        apply_prompt(clf, c, tokenizer=tok)
        return clf
    bench = course.Bench({"prompt": cfg}, tok, ner_splits(tok, 128, None, dev_key="dev"), steps=steps, batch=8,
                         width=10, apply=apply)
    r = bench.train_and_measure("prompt", lr, seed=seed)
    bench.report(r)
    return r


if __name__ == "__main__":         # python lessons/08_prompt_tuning/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
