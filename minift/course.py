"""What every walkthrough shares: its arguments, the base-model check, the clock, and (re-exported)
the fine-tune-and-measure bench of the method lessons.

A walkthrough (`lessons/NN_name/walkthrough.py`) is a story told top to bottom; this module holds
the scaffolding around the story, so that each lesson keeps only its own part. It lives in the
package because `python lessons/NN_name/walkthrough.py` puts only the lesson's folder on sys.path.

The preamble. Every walkthrough starts the same way:

    EXPECTED_SECONDS = 100      # literals: `minift lessons` and the tests read them from the source
    FAST_SECONDS = 10

    from minift import course

    parser = course.parser(__doc__)                     # --fast, and the title as the description
    parser.add_argument("--long", action="store_true", help="...")    # the lesson's own flags
    args = course.start("05", parser)                   # parse, check the base model, 1 thread, clock
    FAST, DEV = args.fast, args.device                  # DEV: a torch.device, cpu unless --device says

`course.elapsed()` is then the wall time since `start` (the lessons' "total" line).

The device. `--device cpu|cuda|cuda:N` (default cpu: the READMEs quote CPU runs) says where the
walkthrough puts every model it builds or loads (`load_base(device=DEV)`, `GPT(cfg).to(DEV)`) and
every tensor it builds by hand; the library's loops (train, evaluation, generation, the Bench) move
their batches to the model's device themselves. `course.device()` is the same device for code that
has no `args`. A time on a GPU is wall time after `torch.cuda.synchronize()` (`course.clock`, `course.sync`);
what only a CPU can measure (CPU seconds) says so, or is skipped with the reason.

Honest --fast. A --fast run is a smoke test: `start` prints FAST_NOTE as its first line and, at
exit, as its last (`end`), and `course.verdict(text)` prints a judgement of a claim ("holds",
"fails", "met") only in a default run: tiny budgets cannot judge anything. The README quotes the
default run. `start(..., kernel=True)` loads the C++ extension (building it once, with a notice)
before anything is timed, so the build never lands inside a measured row.

The bench. Lessons 04-10 and 19 fine-tune the base as a NER tagger with many methods, alike but
for the method: `course.Bench` (minift/method_bench.py). `course.add_sweep` gives such a lesson its
--sweep (re-pick every rate on the dev split) and --sweep-seeds K (pick on the mean over K seeds),
and `course.add_seeds` any lesson its --seeds K. The device and the stopwatch (`device`, `clock`,
`sync`, ...) live in minift/measure.py; this module re-exports them, and the bench."""
from __future__ import annotations

import argparse
import ast
import atexit
import inspect
import os
import re
import subprocess
import sys
import time
from typing import Optional

import torch

from . import figures, measure
from .pretrain import BASE_DIR, recipe_differences
from .report import KERNELS_ENV, header, kernels_note, kernels_to_reproduce
from .validate import number_arg
# Re-exported, so that a walkthrough needs `course` alone: course.clock(), course.Bench(...), ...
from .measure import clock, clock_name, device, forward_cpu_seconds, memory_note, sync  # noqa: F401
from .method_bench import Bench  # noqa: F401
from .report import kib, seed_table  # noqa: F401

FAST_HELP = "tiny budgets and eval slices (seconds)"
FAST_NOTE = ("--fast: a smoke test with tiny budgets; its numbers mean nothing. "
             "The README quotes the default run: minift run {lesson}")
_t_start: Optional[float] = None
_fast = False                   # this run is --fast: no verdicts (`verdict`)
_note_due: Optional[str] = None  # the lesson whose bottom FAST_NOTE `end` still owes


DEVICE_HELP = "where models and tensors live: cpu (default: the READMEs' numbers), cuda or cuda:N"


# ---- the preamble -----------------------------------------------------------------------------

def parser(doc: str, fast_help: str = FAST_HELP) -> argparse.ArgumentParser:
    """The walkthrough's argument parser: its docstring's first line as the description, and
    --fast (the seconds-long smoke test the tests run). The lesson adds its own flags to it."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--fast", action="store_true", help=fast_help)
    p.add_argument("--figures", action=figures.FiguresFlag, help="also draw the lesson's figures (PNG, matplotlib: "
                   f"{figures.INSTALL}); beside the README, or with --fast into a temporary folder")
    p.add_argument("--device", default="cpu", type=device_name, help=DEVICE_HELP)
    return p


def device_name(text: str) -> str:
    """--device's spelling check (argparse `type`): cpu, cuda or cuda:N. Whether torch can use
    it is `resolve_device`'s question, asked by `start`."""
    t = text.strip().lower()
    if t == "cpu" or t == "cuda" or re.fullmatch(r"cuda:\d+", t):
        return t
    raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")


def add_seeds(p: argparse.ArgumentParser, what: str, draws: str, scores: str, cost: str = "") -> None:
    """--seeds K: at the end of the run, retrain `what` with seeds 0..K-1 (`draws`: what a seed
    redraws) and print the spread of `scores` ("val/test F1"); `cost` says what K seeds cost. K is
    checked by `seed_count`; the section itself opens with `seeds_section`."""
    p.add_argument("--seeds", type=seed_count, default=1, metavar="K",
                   help=f"at the end, retrain {what} with seeds 0..K-1 ({draws}) and print the spread of "
                        f"{scores}{f' ({cost})' if cost else ''}; 1, the default, trains seed 0 alone")


def add_sweep(p: argparse.ArgumentParser, help: str) -> None:
    """--sweep (`help`: which rates, picked on the dev split first) and --sweep-seeds K: train every
    rate at seeds 0..K-1 and pick on the mean held-out F1 (`Bench.sweep(seeds=sweep_seeds(args))`).
    `start` refuses --sweep-seeds K > 1 without --sweep (exit 2)."""
    p.add_argument("--sweep", action="store_true", help=help)
    p.add_argument("--sweep-seeds", type=seed_count, default=1, metavar="K",
                   help="with --sweep: train every rate at seeds 0..K-1 and pick on the mean held-out F1 (a 'seed 0' "
                        "column marks seed 0's own pick; K times the sweep's time)")


def sweep_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """The seeds of --sweep's picks: 0..K-1 for --sweep-seeds K (default: seed 0 alone)."""
    return tuple(range(args.sweep_seeds))


def sweep_note(args: argparse.Namespace, dev: str = "dev") -> str:
    """The end of a sweep's header under --sweep-seeds K > 1: "; with seeds 0..K-1: on their mean dev
    F1 (the F1 columns are seed 0's)"."""
    k = args.sweep_seeds
    return f"; with seeds 0..{k - 1}: on their mean {dev} F1 (the F1 columns are seed 0's)" if k > 1 else ""


def seed_count(text: str) -> int:
    """--seeds' check (argparse `type`): a whole number of seeds, 1 or more."""
    return number_arg(text, int, lambda k: k >= 1, "a number of seeds: 1 or more (seeds 0..K-1)")


def seed_list(text: str) -> tuple[int, ...]:
    """A comma-separated list of seeds (argparse `type`): distinct whole numbers, 0 or more."""
    try:
        seeds = tuple(int(t) for t in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of seeds: distinct whole numbers 0 or more, "
                                         f"comma-separated (e.g. 0,1,2)")
    return seeds


def seeds_section(k: int, title: str, draws: str = "") -> list[int]:
    """The seeds 0..k-1 of a --seeds section, after its header: "`title`, seeds [0, .., k-1]
    (`draws`)". [] and no header when k is 1: seed 0 is the lesson's own run."""
    if k < 2:
        return []
    seeds = list(range(k))
    header(f"{title}, seeds {seeds}" + (f" ({draws})" if draws else ""))
    return seeds


def resolve_device(text: str) -> torch.device:
    """The torch.device of --device `text`, or ValueError with one line that names the flag when
    this torch cannot use it (no CUDA build, no GPU visible, index out of range)."""
    dev = torch.device(device_name(text))
    if dev.type == "cpu":
        return dev
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build: torch.version.cuda is None; install a CUDA build of torch"
               if torch.version.cuda is None else
               f"this torch is built for CUDA {torch.version.cuda} but sees no GPU: check nvidia-smi and "
               f"CUDA_VISIBLE_DEVICES")
        raise ValueError(f"--device {text}: torch.cuda.is_available() is False ({why})")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        raise ValueError(f"--device {text}: there {'is' if n == 1 else 'are'} {n} GPU{'s' * (n != 1)} "
                         f"(cuda:0..cuda:{n - 1})")
    return torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)


def base_model_error(lesson: str) -> Optional[str]:
    """Why lesson `lesson` cannot run (the shipped base model is missing), or None."""
    if (BASE_DIR / "model.safetensors").is_file():
        return None
    return (f"lesson {lesson} needs the base model in {BASE_DIR}/; it is shipped with minift "
            f"(or rebuild it with `minift pretrain`).")


def base_model_note() -> Optional[str]:
    """One line when data/base/ holds a model made by another recipe than the shipped one (say by
    `minift pretrain --out data/base --steps 20`): every lesson would run on it, and no README number
    would come out. None for the shipped recipe's model."""
    try:
        diffs = recipe_differences()
    except (OSError, ValueError):                       # no or no readable config.json: load_base says what is wrong
        return None
    if not diffs:
        return None
    return (f"note: {BASE_DIR}/ holds a model made by another recipe ({', '.join(diffs)}), so no README number "
            f"will come out; `git checkout -- data/base` puts the shipped one back, `minift pretrain` retrains it.")


def start(lesson: str, p: argparse.ArgumentParser | str, *, needs_base: bool = True, kernel: bool = False,
          argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse the arguments (`p`: a parser from `parser`, or a docstring for one with --fast only),
    exit with a one-line message when the base model is missing, run torch on one thread, and
    start the clock of `elapsed`. With --fast, print FAST_NOTE now and again at exit (`end`).
    --device: args.device becomes a torch.device (also `device()`); one torch cannot use is one
    line on stderr and exit status 2, like argparse's errors; on a GPU its name is printed once.
    kernel: load the C++ extension now (see `load_kernel`). --sweep-seeds without --sweep
    (`add_sweep`) is an argument error. Returns the parsed arguments."""
    global _t_start, _fast, _note_due
    if isinstance(p, str):
        p = parser(p)
    args = p.parse_args(argv)
    if getattr(args, "sweep_seeds", 1) > 1 and not getattr(args, "sweep", False):
        p.error("--sweep-seeds K picks the sweep's rates on K seeds: give it with --sweep")
    try:
        dev = resolve_device(getattr(args, "device", None) or "cpu")
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    measure.set_device(dev)
    args.device = dev
    if needs_base and (msg := base_model_error(lesson)):
        sys.exit(msg)
    torch.set_num_threads(1)        # tiny matrices: one thread is as fast, and fair on a shared machine (CPU side)
    _fast = bool(getattr(args, "fast", False))
    if _fast:
        print(FAST_NOTE.format(lesson=lesson), flush=True)
        atexit.unregister(end)                  # registered once, however often start runs
        atexit.register(end)
        _note_due = lesson
    if needs_base and (base_note := base_model_note()):
        print(base_note, flush=True)
    note = kernels_note(torch.backends.cpu.get_cpu_capability(), lesson, os.environ.get(KERNELS_ENV))
    if note and not _fast and dev.type == "cpu":
        print(note, flush=True)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)          # plain "cuda" tensors (library defaults) land on this GPU too
        print(f"device: {dev} ({torch.cuda.get_device_name(dev)}): the models and tensors live there; "
              f"its times are wall seconds ('GPU wall': read after torch.cuda.synchronize())", flush=True)
    if kernel:
        load_kernel()
    _t_start = time.perf_counter()
    return args


def end() -> None:
    """The last line of a --fast run: FAST_NOTE again (once; `start` registers this at exit)."""
    global _note_due
    if _note_due is not None:
        print(FAST_NOTE.format(lesson=_note_due), flush=True)
        _note_due = None


def verdict(text: str) -> None:
    """Print a judgement of a claim or target ("... -> holds", "met: NO") in a default run only:
    a --fast run's budgets are too small for its numbers to judge anything."""
    if not _fast:
        print(text, flush=True)


def load_kernel() -> str:
    """Load the C++ extension of minift.quant.ops now (the first time ever, it is built: ~40 s,
    announced by the loader), so that no timed section pays for it. Returns the kernel path."""
    from .quant import ops
    ops.extension()
    return ops.backend()


def _literal(text: str):
    """A command-line value as Python: 0.25, 3, (1, 4), None, true/false; anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_starter(namespace: dict, argv: Optional[list] = None):
    """`python lessons/NN_x/exercise.py try_<what> [value ...] [name=value ...]`: call the exercise's
    starter `try_<what>` with those arguments (each read as a Python literal, else a string), e.g.
    `try_ppo 0.1 20`, `try_forgetting replay=0.25`, `try_lora_targets attn.c_attn mlp.c_fc`. One torch
    thread and, from the command line, the READMEs' CPU kernels, as in the walkthroughs: where torch
    would run AVX-512 ones, the command runs again with ATEN_CPU_CAPABILITY=avx2 (unless it is set)."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    starters = sorted(n for n, f in namespace.items() if n.startswith("try_") and callable(f))
    if not argv or argv[0] not in starters:
        usage = "\n".join(f"  {n}{inspect.signature(namespace[n])}" for n in starters)
        raise SystemExit(f"usage: python {sys.argv[0]} try_<what> [value ...] [name=value ...]; the starters:\n{usage}")
    args = [_literal(a) for a in argv[1:] if "=" not in a]
    kwargs = {k: _literal(v) for k, v in (a.split("=", 1) for a in argv[1:] if "=" in a)}
    want = kernels_to_reproduce(torch.backends.cpu.get_cpu_capability())
    if from_command_line and want and os.environ.get(KERNELS_ENV) is None:   # as `minift run`: the READMEs'
        print(f"note: running again on torch's {want.upper()} CPU kernels, the READMEs' ({KERNELS_ENV}={want}, "
              f"which torch reads as it starts; set it yourself to choose others)", flush=True)
        raise SystemExit(subprocess.call([sys.executable, sys.argv[0], *argv], env={**os.environ, KERNELS_ENV: want}))
    torch.set_num_threads(1)        # as `start` does: the walkthrough's numbers, and fair on a shared machine
    return namespace[argv[0]](*args, **kwargs)


def elapsed() -> float:
    """Wall seconds since `start` (it grows when other jobs share the cores)."""
    if _t_start is None:
        raise RuntimeError("course.elapsed() before course.start(...): the clock starts there")
    return time.perf_counter() - _t_start
