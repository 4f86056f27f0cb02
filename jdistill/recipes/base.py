"""The recipe interface: a teacher policy, recipe state, and a pure loss.

A recipe never edits the train step. Inside one jitted function the step does, per micro-batch:

    teacher = merge(teacher_graphdef, stop_gradient(recipe.teacher_params(recipe_state, teacher_params)))
    student = merge(graphdef, recipe.forward_params(params))            # differentiated w.r.t. params
    loss, metrics, recipe_state = recipe.loss(student, teacher, recipe_state, batch, rng)

then, once per optimizer step, `recipe_state = recipe.update_state(recipe_state, statistics)` with the statistics of
the whole batch, the optimizer update, and `recipe_state = recipe.after_update(recipe_state, new_params, step)`.

A recipe that trains a second network alongside the student (the fake score of DMD / DMD2 / SiD, a discriminator)
returns a `SecondNetwork` from `second_network()`: its parameters and optimizer state live in the recipe state
(`recipe_state[network.name] = {"params", "opt_state"}`, `second_network_slot`), and before the student's loss the
step makes `network.updates_per_step` updates of them with their own optimizer (two time-scale training), each on
the whole batch with the student held fixed; the student's loss then sees the updated network
(`jdistill.train.step`). Recipes without one (the default, None) get exactly the single-network step.

- `student` / `teacher` are Flax NNX modules (`teacher` is None unless the policy's `module_in_step`); a recipe
  calls them as often as it needs (several crops, a PGD attack, sampling with the KV cache).
- `loss` is a scalar (a mean) or a pair `(sum, count)`: with gradient accumulation the step adds the sums and
  counts of all micro-batches and divides once, so token-level objectives normalise by the global count
  (docs/conventions.md, Reductions). Scalars are averaged over micro-batches.
- `loss` never changes the recipe state: its third output is `statistics`, a pytree of per-example arrays
  (leading axis: the batch's examples; `()` for none). With gradient accumulation the step concatenates them
  over the micro-batches, so `update_state` sees the whole batch's statistics once per optimizer step and an
  accumulated step updates the state exactly as the large batch does (e.g. DINO's centre gets one EMA update).
- `check(config)` raises a one-line `ConfigError` when the recipe's options do not fit the job (model kind,
  depth, exits, teacher architecture ...): the job and `jdistill compile` call it before any stage.
- Batches are dicts: classifiers carry `inputs`, `labels [batch]` and `index [batch]` (the example's position in
  the training split); LMs carry `inputs`, `targets [batch, seq]` and `mask [batch, seq]`. Every batch also has
  `epoch` (float: the step's position in passes over the training split).

Teacher policies (docs/conventions.md, Teachers; `jdistill.recipes.teacher_policy`): `frozen` a trained teacher stage
(or `teacher.init_from`),
`ema` an exponential moving average of the student kept in the recipe state, `previous_epoch` the student's
own predictions from the last epoch (a buffer in the recipe state), `random_init` a teacher frozen at its random
initialisation, `snapshots` earlier student checkpoints kept in the recipe state, `cached_topk` top-k teacher
log-probs read from disk with the batch, `self` the student itself (e.g. deeper exits teach earlier ones),
`none` no teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import optax

from jdistill.errors import ConfigError
from jdistill.recipes.teacher_policy import TEACHER_POLICIES, TeacherPolicy, policy_named  # noqa: F401


class Recipe(Protocol):
    """What the train step needs from a recipe (`RecipeBase` supplies the defaults)."""

    name: str
    teacher_policy: str

    @property
    def policy(self) -> TeacherPolicy:
        """The teacher policy named by `teacher_policy`."""

    def init(self, student_params, teacher_params, rng) -> tuple[Any, Any]:
        """(student params to start from, initial recipe state); the state is a pytree (`()` when stateless)."""

    def teacher_params(self, recipe_state, teacher_params):
        """The parameters the teacher runs with this step (the fixed teacher, or e.g. the EMA in the state);
        None: no teacher module (policies `none`, `self`, `previous_epoch`, `cached_topk`)."""

    def forward_params(self, params):
        """The parameters the student's forward pass uses (e.g. straight-through quantised); default: `params`."""

    def loss(self, student, teacher, recipe_state, batch: dict, rng) -> tuple[Any, dict, Any]:
        """(loss: scalar or (sum, count), metrics: dict of scalars, statistics: per-example pytree or `()`)."""

    def evaluated_params(self, params, recipe_state):
        """The weights the stage's evaluation scores (default `params`; e.g. an EMA kept in the recipe state)."""

    def update_state(self, recipe_state, statistics):
        """The recipe state after this optimizer step's batch, from the whole batch's `statistics` (once per step)."""

    def after_update(self, recipe_state, params, step):
        """The recipe state after the optimizer update (e.g. the EMA teacher moves toward `params`)."""

    def check(self, config) -> None:
        """Raise a one-line ConfigError when the recipe cannot train the job `config` (before any stage)."""


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a stage knows that a recipe may need: its step budget, the training split's size, steps per epoch."""

    total_steps: int
    steps_per_epoch: float
    num_examples: int
    batch_size: int
    weight_decay: float = 0.0

    @property
    def num_epochs(self) -> float:
        return self.total_steps / self.steps_per_epoch


@dataclasses.dataclass(frozen=True)
class SecondNetwork:
    """A second network trained in the student's step with its own optimizer and update ratio.

    `loss(params, student, teacher, recipe_state, batch, rng) -> (scalar loss, metrics dict)`: the network's
    objective as a function of its parameters (`params`); `student` is the student module with its parameters held
    fixed (stop_gradient), `teacher` as in `Recipe.loss`. The step applies `updates_per_step` updates of
    `optimizer` per student update, each with its own key, and reports `<name>_loss` / `<name>_grad_norm` (means over
    the updates), the network's metrics prefixed with `<name>_`, and `finite_<name>`: a non-finite loss or gradient
    keeps the whole step's previous state and halts the stage naming the network (`jdistill.train.nonfinite`).
    """

    name: str
    optimizer: optax.GradientTransformation
    loss: Callable[..., tuple[Any, dict]]
    updates_per_step: int = 1

    def __post_init__(self):
        if self.updates_per_step < 1:
            raise ValueError(f"{self.name}: updates_per_step must be >= 1, got {self.updates_per_step}")


def second_network_slot(network: SecondNetwork, params) -> dict:
    """The recipe-state entry of a second network: its parameters and its optimizer's initial state."""
    return {"params": params, "opt_state": network.optimizer.init(params)}


# Recipe fields that `RecipeBase.bind` fills from the stage's RunFacts when the config leaves them None.
FACT_FIELDS = ("total_steps", "steps_per_epoch", "num_examples", "num_epochs", "batch_size", "weight_decay")


class RecipeBase:
    """Defaults for the optional hooks; recipes are frozen dataclasses that inherit from this."""

    name = "recipe"
    teacher_policy = "none"  # the policy's name; `policy` is the TeacherPolicy
    # Born-again style recipes train this many student generations, each taught by the previous one.
    generations = 1
    # LM training batches: "packed" windows, or "prompt_completion" (prompt / completion pairs, docs/data.md).
    batch_layout = "packed"

    def bind(self, facts: RunFacts):
        """This recipe with every `FACT_FIELDS` field that is None set from the stage (schedules over the step
        budget, per-example buffers over the training split); the job calls it before training."""
        if not dataclasses.is_dataclass(self):
            return self
        names = {field.name for field in dataclasses.fields(self)}
        updates = {name: getattr(facts, name) for name in FACT_FIELDS if name in names and getattr(self, name) is None}
        return dataclasses.replace(self, **updates) if updates else self

    @property
    def policy(self) -> TeacherPolicy:
        """The recipe's teacher policy as an object (`jdistill.recipes.teacher_policy`)."""
        return policy_named(self.teacher_policy)

    @property
    def needs_teacher_stage(self) -> bool:
        """Whether the job trains (or loads) a teacher before the student stages."""
        return self.policy.trained_teacher

    def check(self, config) -> None:
        """Raise a one-line `ConfigError` when the recipe cannot train this job (`config`: the whole job's
        `Config`, already valid on its own); called by the job and `jdistill compile` before any stage."""
        del config

    def batch_fields(self, batch: dict) -> dict:
        """The fields the recipe's data adds to the pipeline's batch (`batch`: its `jax.ShapeDtypeStruct`s), as
        `jax.ShapeDtypeStruct`s; default none."""
        del batch
        return {}

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        return student_params, ()

    def teacher_params(self, recipe_state, teacher_params):
        del recipe_state
        return teacher_params

    def forward_params(self, params):
        return params

    def evaluated_params(self, params, recipe_state):
        """The weights the stage's evaluation scores: default the trained `params`; a recipe that deploys an
        average of them returns it (the diffusion recipes: their EMA, `recipe_state["ema"]`)."""
        del recipe_state
        return params

    def update_state(self, recipe_state, statistics):
        del statistics
        return recipe_state

    def after_update(self, recipe_state, params, step):
        del params, step
        return recipe_state

    def extra_metrics(self, model, eval_batches, rng) -> dict:
        """Recipe-specific evaluation of the trained student at the end of its stage (e.g. robust accuracy,
        linear-probe accuracy), merged into the stage's metrics; default none."""
        del model, eval_batches, rng
        return {}

    def eval_stats(self):
        """None (the stage scores the module's predictions: accuracy, NLL, ECE), or `stats(model, batch) -> dict`
        of sums over the batch's valid examples, one of them `count`, for a module that does not predict labels
        (a diffusion denoiser): the stage jits it, adds it over the evaluation batches and reports each sum / count
        (`jdistill.train.evaluation.evaluate`)."""
        return None

    def second_network(self) -> SecondNetwork | None:
        """None (one trained network, the student), or the `SecondNetwork` the step also trains (its parameters in
        `recipe_state[network.name]`, put there by `init` with `second_network_slot`)."""
        return None

    def wraps_student(self):
        """None, or a function `(model_config, rngs) -> nnx.Module` building the trained module (e.g. two peer
        students for mutual distillation); its `__call__` must give the output that is evaluated."""
        return None


def require_kind(recipe_name: str, config, kind: str) -> None:
    """A one-line config error unless the student is a `kind` model ("classifier" or "lm")."""
    if config.student.model.kind != kind:
        what = "classifiers" if kind == "classifier" else "language models"
        raise ConfigError(
            f"recipe {recipe_name!r} trains {what} only: set student.model.kind={kind} "
            f"(it is {config.student.model.kind})"
        )


def require_images(recipe_name: str, config) -> None:
    """A one-line config error unless the student classifies images (crops, rotations, pixel attacks)."""
    require_kind(recipe_name, config, "classifier")
    if config.student.model.classifier_input != "patches":
        raise ConfigError(f"recipe {recipe_name!r} transforms images: set student.model.classifier_input=patches")
