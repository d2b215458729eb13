"""minift: a from-scratch, pure-PyTorch library and course on fine-tuning language models."""
from .model import GPT, GPTConfig, GPTOutput
from .tokenizer import Tokenizer
from .train import TrainConfig, train, evaluate_nll

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "GPTOutput", "Tokenizer", "TrainConfig", "train", "evaluate_nll"]
