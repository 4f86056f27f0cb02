"""`train_tokenizer`: a byte-level BPE tokenizer trained offline on texts, saved as a Hugging Face directory.

The model is GPT-2's design: text is split by the GPT-2 pre-tokenization regex, each piece is written in the
ByteLevel alphabet (one character per byte, so every string is encodable and `token_byte_lengths` is exact), and
BPE merges are learned (Sennrich et al., 2016, "Neural Machine Translation of Rare Words with Subword Units") with
`tokenizers`' trainer. Special tokens: `<|endoftext|>` (id 0; EOS and pad), `<|im_start|>`, `<|im_end|>`; the
saved tokenizer_config.json carries a ChatML chat template, so chat data renders with it.
"""

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from jdistill.text.bpe import BPETokenizer
from jdistill.text.chat import CHATML_TEMPLATE
from jdistill.text.errors import TokenizerError
from jdistill.text.load import load_tokenizer
from jdistill.text.tokenizer import Tokenizer

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (EOS_TOKEN, "<|im_start|>", "<|im_end|>")
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def new_byte_level_bpe() -> tokenizers.Tokenizer:
    """An untrained byte-level BPE tokenizer (GPT-2 pre-tokenization, ByteLevel decoder, no normaliser, so
    decoding returns the text exactly)."""
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def check_training_arguments(vocab_size: int, out_dir: str | os.PathLike) -> Path:
    """The output directory; `TokenizerError` when `vocab_size` < MIN_VOCAB_SIZE or `out_dir` already holds files
    (checked before any text is read)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TokenizerError(f"tokenizer output {out} already exists; choose a new directory or delete it")
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike) -> Tokenizer:
    """Train a byte-level BPE tokenizer of at most `vocab_size` ids (specials and the 256 bytes included; fewer
    if the texts run out of pairs seen twice) and save it to `out_dir` (written under a temporary name, then
    renamed). Returns `load_tokenizer(out_dir)`.

    `TokenizerError` when `vocab_size` < MIN_VOCAB_SIZE, `out_dir` already holds files, or there is no text.
    """
    out = check_training_arguments(vocab_size, out_dir)
    counted = _Counted(texts)
    backend = new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(counted, trainer=trainer)
    if counted.characters == 0:
        raise TokenizerError("no text to train the tokenizer on (the texts are empty)")
    tokenizer = BPETokenizer(
        backend,
        name=str(out),
        tokens={"eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN},
        chat_template=CHATML_TEMPLATE,
        chat_template_name=str(out / "tokenizer_config.json"),
        config={"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tokenizer.save(staging)
        try:
            os.rename(staging, out)  # replaces an empty directory; never one that holds files
        except OSError as error:
            raise TokenizerError(f"tokenizer output {out} was filled while training ({error.strerror})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_tokenizer(str(out))


class _Counted:
    """Iterates over the texts (strings only) and counts their characters."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts = texts
        self.characters = 0

    def __iter__(self):
        for index, text in enumerate(self.texts):
            if not isinstance(text, str):
                raise TokenizerError(f"text {index} is a {type(text).__name__}, expected str")
            self.characters += len(text)
            yield text
