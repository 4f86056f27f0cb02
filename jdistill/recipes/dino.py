"""DINO: self-distillation with no labels, an EMA teacher, centring and sharpening, multi-crop (Caron et al. 2021,
"Emerging Properties in Self-Supervised Vision Transformers"; docs/methods.md#dino).

Per step, from the batch images and the step key (pure, so a resumed run sees the same views):

    views  = 2 global + n_local local crops (`jdistill.data.crops.multi_crop`), every one at the model's input size
    g_s^j  = student head on view j (all views);  g_t^i = EMA-teacher head on global view i
    L      = 1/n_pairs * sum_{i != j} mean_b CE(softmax((g_t^i - c) / tau_t), log_softmax(g_s^j / tau_s))
    c     <- 0.9 c + 0.1 mean(g_t)                 (recipe state, once per optimizer step from the whole batch)
    theta_t <- m theta_t + (1 - m) theta_s,  m_it = 1 - 0.5 (1 - 0.996)(1 + cos(pi it / total))  (after the update)

with n_pairs = 2 (n_crops - 1) (pairs of the same view are skipped), tau_s = 0.1 and tau_t warmed up linearly from
0.04 to 0.07 over the first `teacher_temperature_warmup_epochs` epochs, moving once per epoch (at the epoch's
integer part, as the official per-epoch table; `jdistill.losses.ssl`). The teacher starts
as a copy of the student and lives in the recipe state (policy `ema`); `it` is the 0-based index of the update
(the official code's `momentum_schedule[it]`), `total` = `total_steps` (the stage's train.steps, filled in by
`bind`; 0 keeps m = 0.996 throughout).

Choices for jdistill's digits patch transformer:
- Local crops: the model's position embeddings are fixed to one input size, so local crops are small random
  regions (`local_scale` of the area) upsampled to that size, not lower-resolution inputs (`jdistill.data.crops`).
- The DINO head: the paper's head is a 3-layer MLP, an L2 bottleneck and a weight-normalised projection to
  `out_dim` = 65536 prototypes (last-layer norm frozen at 1). Here the transformer's own classifier head is the
  projection: set the student's `model.num_classes` to `out_dim` (the preset uses 64). With `normalized_head`
  (default) it is used as DINO's last layer, g = (f / |f|) . (W_k / |W_k|) (cosine logits in [-1, 1], bias
  unused): without the normalisation the head can shrink its weights and the outputs collapse to uniform (seen on
  digits: teacher entropy -> log out_dim). The MLP is omitted. Label "accuracy" of this head is meaningless;
  the representation is judged by `extra_metrics`: linear-probe and weighted k-NN (k = 20) accuracy on the
  encoder features (`ModelOutput.features`, `jdistill.eval.probes`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill.data.crops import GLOBAL_SCALE, LOCAL_SCALE, multi_crop
from jdistill.eval.probes import KNN_K, probe_metrics
from jdistill.losses import dino_center_update, dino_loss, dino_teacher_temperature, ema_momentum, ema_update
from jdistill.recipes.base import RecipeBase, require_images


def copy_params(params):
    """A copy of a parameter tree in fresh buffers (an EMA teacher must not alias the donated student)."""
    return jax.tree.map(jnp.copy, params)


def output_dim(params) -> int:
    """Width of the classifier head of a Transformer parameter tree (DINO's `out_dim`)."""
    return int(params["head"]["kernel"].shape[-1])


@dataclasses.dataclass(frozen=True)
class Dino(RecipeBase):
    """DINO (Caron et al. 2021): label-free self-distillation from an EMA teacher, centring, multi-crop."""

    n_global_crops: int = 2
    n_local_crops: int = 6
    student_temperature: float = 0.1
    teacher_temperature_start: float = 0.04
    teacher_temperature_end: float = 0.07
    teacher_temperature_warmup_epochs: int = 30
    center_momentum: float = 0.9
    momentum_base: float = 0.996
    total_steps: int | None = None
    global_scale: tuple = GLOBAL_SCALE
    local_scale: tuple = LOCAL_SCALE
    flip_prob: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    normalized_head: bool = True
    probe_k: int = KNN_K
    name: str = "dino"
    teacher_policy: str = "ema"

    def __post_init__(self):
        object.__setattr__(self, "global_scale", tuple(self.global_scale))
        object.__setattr__(self, "local_scale", tuple(self.local_scale))
        if self.n_global_crops < 1 or self.n_local_crops < 0 or self.n_global_crops + self.n_local_crops < 2:
            raise ValueError("need n_global_crops >= 1, n_local_crops >= 0 and at least 2 crops in all")
        if not 0.0 <= self.momentum_base <= 1.0 or not 0.0 <= self.center_momentum <= 1.0:
            raise ValueError("momentum_base and center_momentum must be in [0, 1]")
        for field in ("global_scale", "local_scale"):
            low, high = getattr(self, field)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"{field} must be (low, high) with 0 < low <= high <= 1")

    def check(self, config):
        require_images(self.name, config)

    def init(self, student_params, teacher_params, rng):
        del teacher_params, rng
        state = {"teacher": copy_params(student_params), "center": jnp.zeros((output_dim(student_params),))}
        return student_params, state

    def teacher_params(self, recipe_state, teacher_params):
        del teacher_params
        return recipe_state["teacher"]

    def views(self, images, rng):
        """The crops of this step, `[n_crops, batch, H, W, C]`, global ones first."""
        return multi_crop(
            rng,
            images,
            n_global=self.n_global_crops,
            n_local=self.n_local_crops,
            global_scale=self.global_scale,
            local_scale=self.local_scale,
            flip_prob=self.flip_prob,
            brightness=self.brightness,
            contrast=self.contrast,
        )

    def head(self, model, inputs):
        """DINO head outputs `[batch, out_dim]`: cosine logits (`normalized_head`) or the plain head's logits."""
        if not self.normalized_head:
            return model(inputs).logits
        features = model(inputs, logits=False).features.astype(jnp.float32)
        kernel = model.head_weights()[0].astype(jnp.float32)
        features = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-6)
        kernel = kernel / jnp.maximum(jnp.linalg.norm(kernel, axis=0, keepdims=True), 1e-6)
        return features @ kernel

    def teacher_temperature(self, epoch):
        """tau_t of the step's epoch: the warm-up moves once per epoch (the official code's per-epoch table)."""
        return dino_teacher_temperature(
            jnp.floor(epoch),
            self.teacher_temperature_warmup_epochs,
            self.teacher_temperature_start,
            self.teacher_temperature_end,
        )

    def loss(self, student, teacher, recipe_state, batch, rng):
        views = self.views(batch["inputs"], rng)
        n_crops, size = views.shape[:2]
        flat = views.reshape(n_crops * size, *views.shape[2:])
        student_out = self.head(student, flat).reshape(n_crops, size, -1)
        teacher_out = self.head(teacher, flat[: self.n_global_crops * size]).reshape(self.n_global_crops, size, -1)
        tau_t = self.teacher_temperature(batch["epoch"])
        loss = dino_loss(
            student_out,
            teacher_out,
            recipe_state["center"],
            student_temperature=self.student_temperature,
            teacher_temperature=tau_t,
            n_global_crops=self.n_global_crops,
        )
        teacher_probs = jax.nn.softmax((teacher_out - recipe_state["center"]) / tau_t, axis=-1)
        entropy = -jnp.sum(teacher_probs * jnp.log(teacher_probs + 1e-12), axis=-1).mean()
        metrics = {"dino": loss, "teacher_temperature": tau_t, "teacher_entropy": entropy}
        # Per example (batch axis first): the centre moves once per optimizer step, from the whole batch.
        statistics = {"teacher_out": jax.lax.stop_gradient(jnp.swapaxes(teacher_out, 0, 1))}
        return loss, metrics, statistics

    def update_state(self, recipe_state, statistics):
        """c <- m c + (1 - m) mean(g_t) over the whole batch's global crops (once per optimizer step)."""
        teacher_out = jnp.swapaxes(statistics["teacher_out"], 0, 1)
        return dict(recipe_state, center=dino_center_update(recipe_state["center"], teacher_out, self.center_momentum))

    def momentum(self, step):
        """Teacher momentum for the update that produced step `step` (1-based): m at it = step - 1."""
        if not self.total_steps or self.total_steps <= 0:
            return jnp.asarray(self.momentum_base, jnp.float32)
        return ema_momentum(jnp.asarray(step) - 1, self.total_steps, self.momentum_base)

    def after_update(self, recipe_state, params, step):
        teacher = ema_update(recipe_state["teacher"], params, self.momentum(step))
        return dict(recipe_state, teacher=teacher)

    def extra_metrics(self, model, eval_batches, rng):
        return probe_metrics(model, eval_batches, rng, k=self.probe_k)
