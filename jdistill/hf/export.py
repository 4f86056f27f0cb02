"""`jdistill export --run-dir RUN --stage NAME --out DIR`: a trained stage as a Hugging Face checkpoint.

The stage's newest parameters (its orbax checkpoint in RUN/NAME/checkpoints) are written as `model.safetensors` +
`config.json` (Llama, Qwen3 or Qwen3-Next, `jdistill.hf.config.hf_config_from_model`), with the run's data
tokenizer files when it is not the byte-level one, into a temporary folder renamed to DIR at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jdistill.hf.checkpoint import save_pretrained
from jdistill.hf.config import HFImportError
from jdistill.hf.files import atomic_directory, check_output_dir, copy_tokenizer_files, require_file
from jdistill.hf.tokenizer_facts import data_tokenizer
from jdistill.models import Transformer


def _tokenizer_dir(spec: str) -> Path | None:
    """The folder holding the run's tokenizer files, None for the byte-level tokenizer."""
    if spec == "bytes":
        return None
    directory = Path(spec.removeprefix("hf:"))
    require_file(directory, "tokenizer.json", f"data.tokenizer {spec}")
    return directory


def _special_ids(spec: str) -> dict:
    """bos / eos / pad ids of the tokenizer for config.json (none for bytes: transformers then has no defaults)."""
    if spec == "bytes":
        return {}
    from jdistill.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    ids = {"eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    if tokenizer.bos_id is not None:
        ids["bos_token_id"] = tokenizer.bos_id
    return ids


def export_stage(run_dir: str | Path, stage: str, out: str | Path) -> list[str]:
    """Write stage `stage` of `run_dir` to `out` (which must not exist or be empty); the file names written."""
    from jdistill.train.restore import load_stage

    out = check_output_dir(Path(out))
    model, config = load_stage(run_dir, stage)
    if not isinstance(model, Transformer):  # a recipe's wrapper (e.g. feature_kd's projections): its transformer
        model = getattr(model, "model", None)
        if not isinstance(model, Transformer):
            raise HFImportError(f"--stage {stage}: its model is not a single transformer and cannot be exported")
    spec = data_tokenizer(config.data)
    tokenizer_dir = _tokenizer_dir(spec)
    with atomic_directory(out) as tmp:
        save_pretrained(model, tmp, extra_config=_special_ids(spec))
        copied = copy_tokenizer_files(tokenizer_dir, tmp) if tokenizer_dir is not None else []
    return ["config.json", "model.safetensors", *copied]


def cmd_export(args: argparse.Namespace) -> int:
    written = export_stage(args.run_dir, args.stage, args.out)
    print(f"wrote {args.out} ({', '.join(written)}) from {Path(args.run_dir) / args.stage}")
    return 0
