"""A teacher that reads its own tokenizer (distillation across tokenizers, `distill.objective: uld`).

When `teacher.init_from` is an HF folder whose tokenizer.json is not the data tokenizer (a different fingerprint,
which the vocabulary policy allows under `uld` only, `jdistill.hf.vocab_policy`), the job:

  - tokenises the data source with the teacher's tokenizer too (the same cache as any tokenisation);
  - gives the `kd` recipe `teacher_seq_len` (`distill.options.teacher_seq_len`, else the split's teacher / student
    token ratio times `data.seq_len`, plus 10%, `jdistill.data.teacher_view.default_teacher_seq_len`), so each
    student window carries the teacher's tokens of the same text and the alignment of the two
    (`jdistill.data.teacher_view`);
  - evaluates the loaded teacher on the held-out split in its own tokenisation (bits per byte compare across
    tokenizers; perplexities do not).

Chat data is refused (each tokenizer renders its own chat template: the two texts differ), as is a recipe that
cannot feed the teacher its own tokens.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jdistill.errors import ConfigError
from jdistill.hf.tokenizer_facts import checkpoint_tokenizer, data_tokenizer, tokenizer_facts


def teacher_tokenizer(config: Any) -> str | None:
    """`hf:DIR` of the teacher checkpoint when its tokenizer is not the data's (LM jobs), else None."""
    spec = config.teacher.init_from
    if config.student.model.kind != "lm" or not spec or not spec.startswith("hf:"):
        return None
    data_spec = data_tokenizer(config.data)
    if data_spec != "bytes" and not Path(data_spec.removeprefix("hf:")).exists():  # `jdistill compile` off the pod
        return None
    facts = checkpoint_tokenizer(spec)
    if facts is None or facts.fingerprint == tokenizer_facts(data_spec).fingerprint:
        return None
    return "hf:" + spec.removeprefix("hf:")


def teacher_data_config(config: Any) -> Any:
    """`config.data` as the teacher reads it: with its own tokenizer when that differs from the data's."""
    spec = teacher_tokenizer(config)
    return config.data if spec is None else dataclasses.replace(config.data, tokenizer=spec)


def with_teacher_tokens(recipe: Any, config: Any) -> Any:
    """The recipe with `teacher_seq_len` set when its teacher reads another tokenizer (module docstring); one-line
    ConfigErrors for chat data and for recipes that cannot. Tokenises the source with the teacher's tokenizer."""
    spec = teacher_tokenizer(config)
    if spec is None or not recipe.policy.trained_teacher:
        return recipe
    from jdistill.data import lm
    from jdistill.data.teacher_view import default_teacher_seq_len

    if "teacher_seq_len" not in {field.name for field in dataclasses.fields(recipe)}:
        raise ConfigError(
            f"teacher.init_from {config.teacher.init_from}: its tokenizer is not data.tokenizer and recipe "
            f"{recipe.name!r} cannot feed a teacher its own tokens; use recipe kd with objective uld"
        )
    student = lm.open_split(lm.config_dir(config.data), "train")
    if student.kind == "chat":
        raise ConfigError(
            f"teacher.init_from {config.teacher.init_from}: distilling across tokenizers needs text or "
            f"prompt/completion data, not chat ({config.data.name}: each tokenizer renders its own chat template)"
        )
    if recipe.teacher_seq_len is not None:
        return recipe
    teacher = lm.open_split(lm.config_dir(teacher_data_config(config)), "train")
    return dataclasses.replace(recipe, teacher_seq_len=default_teacher_seq_len(student, teacher, config.data.seq_len))


def teacher_view_dataset_fn(config: Any, recipe: Any, seed: int, batch_size: int):
    """The student stage's `dataset_fn` that adds the teacher's own tokens to each training batch, or None."""
    if getattr(recipe, "teacher_seq_len", None) is None:
        return None
    import jax

    from jdistill.data import lm
    from jdistill.data.teacher_view import TeacherView, attach_teacher_view
    from jdistill.text import load_tokenizer

    windows = lm.lm_windows(config.data, "train")
    teacher_data = teacher_data_config(config)
    view = TeacherView(
        windows,
        lm.open_split(lm.config_dir(teacher_data), "train"),
        student_byte_lengths=load_tokenizer(config.data.tokenizer).token_byte_lengths(),
        teacher_byte_lengths=load_tokenizer(teacher_data.tokenizer).token_byte_lengths(),
        teacher_seq_len=recipe.teacher_seq_len,
    )

    def attach(dataset):
        return attach_teacher_view(
            dataset,
            view,
            seed=seed,
            batch_size=batch_size // jax.process_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    return attach
