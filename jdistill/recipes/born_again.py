"""Born-again networks / multi-generation self-distillation (Furlanello et al. 2018; Tian et al. 2020,
"Rethinking Few-Shot Image Classification", docs/methods.md#born-again-networks).

    generation 1 is distilled from the trained teacher, generation k > 1 from generation k - 1:
    loss_k = distill_weight * c * D(p_{k-1}, p_k at temperature T) + label_weight * CE(y, s_k)

with D the configured divergence and c = T^2 when `scale_by_temperature_squared` (the KD recipe's loss, reused).
Every generation has the student's architecture; the first teacher must have it too (`teacher.model` equal to
`student.model`). The job (`jdistill.train.job.run_job`) trains `student_born_again_gen1 .. gen<generations>`,
each starting from the same initialisation and data order, and hands each finished generation to the next as
its frozen teacher. The optional ensemble of all earlier generations as teacher is not implemented: the job
passes a stage only its immediate predecessor.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from jdistill.errors import ConfigError
from jdistill.models import Transformer
from jdistill.recipes.kd import KnowledgeDistillation


def same_shapes(a, b) -> bool:
    """Whether two parameter trees have the same structure and leaf shapes."""
    if jax.tree.structure(a) != jax.tree.structure(b):  # type: ignore[operator]  # jaxlib has no PyTreeDef stub
        return False
    return all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def require_same_architecture(recipe_name: str, student_params, teacher_params) -> None:
    """A one-line config error unless the teacher's parameters have the student's tree and shapes."""
    if teacher_params is not None and not same_shapes(student_params, teacher_params):
        raise ConfigError(
            f"recipe {recipe_name!r} distils a model into its own architecture: set teacher.model "
            f"equal to student.model"
        )


def abstract_params(model_config):
    """The parameters of a Transformer of `model_config` as shapes and dtypes (nothing allocated)."""
    return nnx.state(nnx.eval_shape(lambda: Transformer(model_config, rngs=nnx.Rngs(0))))


def require_same_architecture_config(recipe_name: str, config) -> None:
    """`require_same_architecture` on the abstract parameters of `config.teacher.model` and `config.student.model`:
    the check before the teacher is trained."""
    require_same_architecture(recipe_name, abstract_params(config.student.model), abstract_params(config.teacher.model))


@dataclasses.dataclass(frozen=True)
class BornAgain(KnowledgeDistillation):
    """Born-again networks: `generations` students of one architecture, each distilled from the one before."""

    generations: int = 3
    temperature: float = 4.0
    name: str = "born_again"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        super().__post_init__()
        if self.generations < 2:
            raise ValueError(f"generations must be >= 2 (one generation is plain `kd`), got {self.generations}")

    def check(self, config):
        require_same_architecture_config(self.name, config)

    def init(self, student_params, teacher_params, rng):
        require_same_architecture(self.name, student_params, teacher_params)
        return super().init(student_params, teacher_params, rng)
