"""The vocabulary policy of an LM job (`distill.vocab`, docs/checkpoints.md#vocabulary-policy), checked before any
stage: which rows of the teacher's and the student's logits are real tokens, and whether the two models read the
data's tokenizer at all.

  - Every model that reads the data needs an embedding row per token id: data tokenizer vocab <= model.vocab_size.
  - A checkpoint folder's own tokenizer (init_from hf:DIR with a tokenizer.json) must be the data tokenizer (same
    fingerprint); only a teacher distilled with `objective: uld` (which compares sorted probabilities, not token
    identities) may have another one.
  - `shared` (default): D compares the first V rows of each model, V = the data tokenizer's vocab size (the
    teacher's own tokenizer's under uld), so padded rows carry no probability and vocab sizes may differ;
    `full`: every row, vocab sizes equal (checked by `Config.validate`).
  - A data tokenizer folder that does not exist here (e.g. `jdistill compile` off the training machine): no
    tokenizer checks, and V = min(teacher, student vocab_size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jdistill.errors import ConfigError
from jdistill.hf.tokenizer_facts import TokenizerFacts, checkpoint_tokenizer, data_tokenizer, tokenizer_facts

ROLES = ("student", "teacher")


def _separate_teacher(recipe: Any) -> bool:
    """Whether the recipe's teacher is a model of `teacher.model` (trained, loaded, cached or random)."""
    policy = recipe.policy
    return bool(policy.trained_teacher or policy.random_teacher or policy.cache)


def _checkpoint_tokenizers(config: Any, roles: tuple[str, ...]) -> dict[str, TokenizerFacts]:
    found = {}
    for role in roles:
        spec = getattr(config, role).init_from
        if spec and spec.startswith("hf:"):
            facts = checkpoint_tokenizer(spec)
            if facts is not None:
                found[role] = facts
    return found


def check_vocabularies(config: Any, recipe: Any) -> tuple[int, int] | None:
    """One-line ConfigErrors for tokenizers and vocabularies that do not fit; the (student, teacher) real
    vocabulary sizes for the recipe (None under `distill.vocab: full`, or for classifiers)."""
    if config.student.model.kind != "lm":
        return None
    roles = ("student", "teacher") if _separate_teacher(recipe) else ("student",)
    spec = data_tokenizer(config.data)
    if spec != "bytes" and not Path(spec.removeprefix("hf:")).exists():  # e.g. `jdistill compile` off the pod
        shared = min(config.student.model.vocab_size, config.teacher.model.vocab_size)
        return None if config.distill.vocab == "full" else (shared, shared)
    data = tokenizer_facts(spec)
    uld = not _objective_needs_same_vocabulary(recipe)
    own = _checkpoint_tokenizers(config, roles)
    reads = {role: data for role in roles}  # the tokenizer whose ids each model embeds
    if "teacher" in own and own["teacher"].fingerprint != data.fingerprint and uld:
        reads["teacher"] = own["teacher"]  # it reads its own tokens of the text (jdistill.train.teacher_tokens)
    for role, facts in reads.items():
        rows = getattr(config, role).model.vocab_size
        if facts.vocab_size > rows:
            where = "data.tokenizer" if facts is data else f"{role}.init_from's tokenizer"
            raise ConfigError(
                f"{where} {facts.spec}: its vocabulary ({facts.vocab_size} ids) exceeds {role}.model.vocab_size "
                f"({rows} embedding rows)"
            )
    teacher_vocab = data.vocab_size
    for role, facts in own.items():
        if facts.fingerprint == data.fingerprint:
            continue
        if role == "teacher" and uld:
            teacher_vocab = facts.vocab_size
            continue
        raise ConfigError(
            f"{role}.init_from {getattr(config, role).init_from}: its tokenizer ({facts.vocab_size} ids, "
            f"{facts.fingerprint[:12]}) is not data.tokenizer {data.spec} ({data.vocab_size} ids, "
            f"{data.fingerprint[:12]}); distil across tokenizers with distill.objective=uld"
        )
    differ = config.teacher.model.vocab_size != config.student.model.vocab_size
    if "teacher" in roles and differ and not _takes_real_vocab(recipe):
        raise ConfigError(
            f"recipe {recipe.name!r} compares teacher and student logits row by row: teacher.model.vocab_size "
            f"({config.teacher.model.vocab_size}) must equal student.model.vocab_size "
            f"({config.student.model.vocab_size}) (recipe kd handles padded vocabularies)"
        )
    if config.distill.vocab == "full":
        return None
    return data.vocab_size, teacher_vocab


def _objective_needs_same_vocabulary(recipe: Any) -> bool:
    divergence = getattr(recipe, "divergence", None)
    return divergence is None or divergence().same_vocabulary


def _takes_real_vocab(recipe: Any) -> bool:
    return dataclasses.is_dataclass(recipe) and "real_vocab" in {field.name for field in dataclasses.fields(recipe)}


def with_real_vocab(recipe: Any, config: Any) -> Any:
    """The recipe after `check_vocabularies`, with `real_vocab` set when it takes one and leaves it unset."""
    real = check_vocabularies(config, recipe)
    if real is not None and _takes_real_vocab(recipe) and recipe.real_vocab is None:
        recipe = dataclasses.replace(recipe, real_vocab=real)
    return recipe
