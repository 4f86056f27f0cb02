"""Feature / hint distillation and attention transfer with a student -> teacher layer map
(docs/methods.md#feature-and-attention-transfer).

    loss = KD(s, t) + feature_weight * sum_pairs H(r_j(u_j), v_j) + attention_weight * sum_pairs AT(u_j, v_j)

- `layer_map` "s1:t1,s2:t2,...": student feature u_j -> teacher feature v_j. Each side is an integer, the residual
  stream after that block (`model(x, return_hidden_states=True)`: 0 the embeddings, i block i, negative from the
  end, so "-1:-1" maps the last blocks), or a module path such as `blocks.0.mlp`, whose output is captured without
  editing the model (`jdistill.models.capture`; paths inside blocks need `model.remat: none`).
- H: `feature_loss` `mse` (FitNets hint, Romero et al. 2015: mean over the width of (r(u) - v)^2) or `cosine`
  (1 - cos(r(u), v)), averaged over valid positions (`losses.hint_mse` / `hint_cosine`).
- r_j: a learned linear projection [d_student, d_teacher] per pair when the widths differ. It must be trained with
  the student, so it lives in the student's parameters: `wraps_student` wraps the Transformer with the projections
  (`FeatureStudent`); the wrapper's output is the student's. The teacher's width is not known to the recipe, so it
  is `teacher_width` (set it to `teacher.model.d_model`; a mismatch is a one-line error at the first step).
- AT: attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): the per-position map
  mean_c |u|^p, L2-normalised per example, squared difference averaged over examples and positions
  (`losses.attention_transfer`); widths may differ. The paper's beta = 1e3 with beta/2 per pair is
  `attention_weight` = 500.
- KD: the logit term of the `kd` recipe (any divergence, `distill_weight`, `label_weight`, T, T^2).
The feature terms are means; they are added to the KD sum weighted by its count, so the total stays a
(sum, count) pair over valid positions (examples for classifiers, tokens for LMs).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.models import Transformer
from jdistill.models.capture import capture
from jdistill.nn.params import dense
from jdistill.recipes.base import RecipeBase
from jdistill.recipes.kd import KnowledgeDistillation

FEATURE_LOSSES = {"mse": losses.hint_mse, "cosine": losses.hint_cosine}


def _is_layer(side: str) -> bool:
    return side.lstrip("-").isdigit()


def parse_layer_map(layer_map) -> tuple[tuple[str, str], ...]:
    """ "1:2,2:4" (or a list of "s:t" strings) -> (("1", "2"), ("2", "4")); each side a layer number or a path."""
    items = layer_map.split(",") if isinstance(layer_map, str) else list(layer_map)
    pairs = []
    for item in items:
        sides = [side.strip() for side in str(item).split(":")]
        if len(sides) != 2 or not all(sides) or any(" " in side for side in sides):
            raise ConfigError(
                f"distill.options.layer_map: {str(item).strip()!r} is not STUDENT:TEACHER "
                "(each a layer number such as 2 or -1, or a module path such as blocks.0.mlp)"
            )
        pairs.append((sides[0], sides[1]))
    if not pairs:
        raise ConfigError('distill.options.layer_map: name at least one STUDENT:TEACHER pair, e.g. "1:2,2:4"')
    return tuple(pairs)


class FeatureStudent(nnx.Module):
    """The student Transformer plus one learned projection [d_model, teacher_width] per layer-map pair."""

    def __init__(self, config, num_pairs: int, teacher_width: int, *, rngs: nnx.Rngs):
        self.model = Transformer(config, rngs=rngs)
        self.projections = nnx.List(
            [
                dense(config.d_model, teacher_width, ("embed", "projection"), use_bias=False, rngs=rngs)
                for _ in range(num_pairs)
            ]
        )

    @property
    def config(self):
        return self.model.config

    def __call__(self, inputs, **kwargs):
        return self.model(inputs, **kwargs)

    def head_weights(self):
        return self.model.head_weights()


def features(model, inputs, sides, **model_kwargs):
    """(model output, [feature per side]): hidden states by layer number, module outputs by path. `model_kwargs`
    reach the model call (an LM batch's `lm_kwargs`)."""
    paths = [side for side in sides if not _is_layer(side)]
    if paths:  # capture edits the modules it records; a module merged outside this trace level cannot be edited
        model = nnx.merge(*nnx.split(model))
    with capture(model, paths) as captured:
        output = model(inputs, return_hidden_states=True, **model_kwargs)
    hidden = output.hidden_states
    found = []
    for side in sides:
        if not _is_layer(side):
            found.append(captured[side])
            continue
        layer = int(side)
        if not -len(hidden) <= layer < len(hidden):
            raise ConfigError(
                f"distill.options.layer_map: layer {layer} does not exist (the model has "
                f"{len(hidden) - 1} blocks: 0 is the embeddings, 1..{len(hidden) - 1} the blocks)"
            )
        found.append(hidden[layer])
    return output, found


def example_inputs(model_config, seq_len: int):
    """A one-example input of the model's kind, for abstract tracing (`jax.eval_shape`)."""
    if model_config.kind == "lm" or model_config.classifier_input == "tokens":
        return jnp.zeros((1, seq_len), jnp.int32)
    size = model_config.image_size
    return jnp.zeros((1, size, size, model_config.num_channels), jnp.float32)


@dataclasses.dataclass(frozen=True)
class FeatureDistillation(RecipeBase):
    """Hint (MSE / cosine, learned projection) and attention-transfer distillation over a layer map, plus logit KD."""

    layer_map: str = "-1:-1"
    feature_loss: str = "mse"
    feature_weight: float = 1.0
    attention_weight: float = 0.0
    attention_p: float = 2.0
    teacher_width: int | None = None
    objective: str = "forward_kl"
    temperature: float = 2.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    beta: float = 0.5
    scale_by_temperature_squared: bool | None = None
    name: str = "feature_kd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        parse_layer_map(self.layer_map)
        if self.feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {sorted(FEATURE_LOSSES)}, got {self.feature_loss!r}")
        losses.divergence(self.objective)
        if self.teacher_width is not None and self.teacher_width < 1:
            raise ValueError(f"teacher_width must be a positive integer, got {self.teacher_width!r}")

    @property
    def pairs(self):
        return parse_layer_map(self.layer_map)

    def kd(self) -> KnowledgeDistillation:
        return KnowledgeDistillation(
            objective=self.objective,
            temperature=self.temperature,
            distill_weight=self.distill_weight,
            label_weight=self.label_weight,
            beta=self.beta,
            scale_by_temperature_squared=self.scale_by_temperature_squared,
        )

    def wraps_student(self):
        teacher_width = self.teacher_width
        num_pairs = len(self.pairs)

        def build(config, rngs):
            if teacher_width is None or teacher_width == config.d_model:
                return Transformer(config, rngs=rngs)
            return FeatureStudent(config, num_pairs, teacher_width, rngs=rngs)

        return build

    def check(self, config):
        """Trace both models' features on an abstract batch (nothing is computed): every layer number and module
        path must exist, and the widths must match (or `teacher_width` give the projection)."""
        student = nnx.eval_shape(lambda: self.wraps_student()(config.student.model, nnx.Rngs(0)))
        teacher = nnx.eval_shape(lambda: Transformer(config.teacher.model, rngs=nnx.Rngs(1)))
        inputs = example_inputs(config.student.model, config.data.seq_len)
        pairs = self.pairs

        def paired_features(student_state, teacher_state):
            s_model = nnx.merge(nnx.graphdef(student), student_state)
            s_model = s_model.model if isinstance(s_model, FeatureStudent) else s_model
            _, s_feats = features(s_model, inputs, [s for s, _ in pairs])
            _, t_feats = features(nnx.merge(nnx.graphdef(teacher), teacher_state), inputs, [t for _, t in pairs])
            return s_feats, t_feats

        try:
            s_feats, t_feats = jax.eval_shape(paired_features, nnx.state(student), nnx.state(teacher))
        except (ValueError, KeyError) as error:  # a module path that does not exist or is not called
            raise ConfigError(f"distill.options.layer_map: {str(error).strip(chr(34) + chr(39))}") from None
        found = [(s.shape[-1], t.shape[-1]) for s, t in zip(s_feats, t_feats, strict=True)]
        d_model = config.student.model.d_model
        projection = (d_model, self.teacher_width) if self.teacher_width not in (None, d_model) else None
        for d_s, d_t in found:
            if (projection is None and d_s != d_t) or (projection is not None and projection != (d_s, d_t)):
                raise ConfigError(
                    f"recipe feature_kd: student features of width {d_s}, teacher features of width "
                    f"{d_t}; set distill.options.teacher_width={d_t} (a learned projection "
                    f"{d_s}->{d_t})"
                )

    def _hint(self, student_feature, teacher_feature, projection, mask):
        kernel = None if projection is None else projection.kernel[...]
        if mask is not None:
            mask = jnp.reshape(mask, mask.shape + (1,) * (student_feature.ndim - 1 - mask.ndim))
        return FEATURE_LOSSES[self.feature_loss](student_feature, teacher_feature, projection=kernel, mask=mask)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        model = student.model if isinstance(student, FeatureStudent) else student
        projections = student.projections if isinstance(student, FeatureStudent) else [None] * len(self.pairs)
        s_out, s_feats = features(model, batch["inputs"], [s for s, _ in self.pairs], **lm_kwargs(batch))
        t_out, t_feats = features(teacher, batch["inputs"], [t for _, t in self.pairs], **lm_kwargs(batch))
        (total, count), metrics = self.kd().loss_from_logits(s_out.logits, t_out.logits, labels, mask)
        hint = sum(self._hint(s, t, p, mask) for s, t, p in zip(s_feats, t_feats, projections, strict=True))
        attention = sum(
            losses.attention_transfer(s, t, p=self.attention_p) for s, t in zip(s_feats, t_feats, strict=True)
        )
        total = total + count * (self.feature_weight * hint + self.attention_weight * attention)
        metrics = dict(metrics, feature=hint, attention_transfer=attention)
        return (total, count), metrics, ()
