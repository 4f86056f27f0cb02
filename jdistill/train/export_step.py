"""`run.export: DIR`: the job's last step writes the final recipe student stage as a Hugging Face checkpoint.

`check_export` runs with the other checks, before any stage trains, so a job that could not export fails in one
line at its start rather than after hours of training: the folder must be new (or empty; on `--resume` an existing
folder is an export already done), and the student must be a model `jdistill.hf.save_pretrained` can write (Llama /
Qwen3 / Qwen3-Next layout, no output-head bias). Remote URLs (gs://) are refused by `RunConfig.validate`.
`export_final` then calls `jdistill.hf.export.export_stage` (the function behind `jdistill export`) on process 0;
it writes a temporary folder and renames it, so DIR is either absent or complete.
"""

from __future__ import annotations

from pathlib import Path

import jax

from jdistill.errors import ConfigError, UserError
from jdistill.hf.config import hf_config_from_model
from jdistill.hf.export import export_stage
from jdistill.hf.files import check_output_dir
from jdistill.train.distributed import barrier


def check_export(config, *, resume: bool = False) -> Path | None:
    """The export folder of `config.run.export` (None without one), after one-line ConfigErrors for a folder
    that is taken or a student that cannot be written as an HF checkpoint. `config`: init_from resolved."""
    if config.run.export is None:
        return None
    out = Path(config.run.export).expanduser()
    if not (resume and out.is_dir()):
        try:
            check_output_dir(out, "run.export")
        except UserError as error:
            raise ConfigError(str(error)) from None
    model = config.student.model
    try:
        hf_config_from_model(model)
    except UserError as error:
        raise ConfigError(f"run.export: {error}") from None
    if model.head_bias:
        raise ConfigError(
            "run.export: student.model.head_bias is true but Hugging Face Llama / Qwen3 heads have no bias "
            "(set student.model.head_bias=false)"
        )
    return out


def export_final(config, run_dir: Path, stage: str, *, resume: bool = False) -> Path | None:
    """Write `stage` of `run_dir` to `run.export` (process 0; the others wait); the folder, or None when the job
    exports nothing. On `--resume` a folder already there is the finished export and is kept."""
    if config.run.export is None:
        return None
    out = Path(config.run.export).expanduser()
    if jax.process_index() == 0 and not (resume and out.is_dir() and any(out.iterdir())):
        export_stage(run_dir, stage, out)
    barrier("run_export")
    return out


__all__ = ["check_export", "export_final"]
