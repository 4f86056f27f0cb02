"""Self-supervised self-distillation: DINO and random teachers (docs/methods.md#dino, docs/methods.md#random-teachers).

Shapes at the boundary: projection-head outputs `[n_crops, batch, dim]` (crop-major: the first
`n_global_crops` crops are the global views), parameters as any pytree of arrays.

Conventions shared by every function here (see docs/conventions.md):
  - Log-probabilities come from `log_softmax` in float32 whatever the input dtype (bf16 is upcast,
    float64 is kept), through `jdistill.losses.logits._log_probs`.
  - Teacher targets are wrapped in `jax.lax.stop_gradient`: in DINO the teacher is an EMA of the
    student and receives no gradient.
  - Schedules (`ema_momentum`, `dino_teacher_temperature`) accept Python numbers or traced scalars
    and return float32 scalars, so they can live inside a jitted train step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.losses import _common
from jdistill.losses.logits import forward_kl


def _float32_or_wider(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def dino_pair_count(n_crops: int, n_global: int = 2) -> int:
    """Number of (teacher crop i, student crop j) pairs with i != j in the DINO loss: n_global * (n_crops - 1).

    Every global crop is a teacher view; it is paired with every student crop except itself.
    With the default multi-crop setting (2 global + 10 local crops) that is 2 * 11 = 22 pairs.
    """
    if not 1 <= n_global <= n_crops:
        raise ValueError(f"n_global must be in [1, n_crops={n_crops}]; got {n_global!r}")
    return n_global * (n_crops - 1)


def dino_loss(
    student_outputs: ArrayLike,
    teacher_outputs: ArrayLike,
    center: ArrayLike,
    *,
    student_temperature=0.1,
    teacher_temperature=0.04,
    n_global_crops: int = 2,
) -> Array:
    """DINO self-distillation loss (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers").

    With g_s the student outputs for crop j and g_t the teacher outputs for global crop i,
        P_t^i = softmax((g_t^i - c) / tau_t)       (centred, sharpened, under stop_gradient)
        log P_s^j = log_softmax(g_s^j / tau_s)
        L = 1 / (n_pairs * batch) * sum_{i, j: i != j} sum_b sum_k -P_t^i[b, k] log P_s^j[b, k]
    where i ranges over the `n_global_crops` teacher crops, j over all `n_crops` student crops, and
    n_pairs = `dino_pair_count(n_crops, n_global_crops)`. This is the official code's sum of per-pair
    batch-mean cross-entropies divided by the number of pairs. Teacher crop i and student crop i are
    the same view and are skipped.

    Temperatures: each divides its own logits; there is no T^2 factor. Defaults are the official
    code's tau_s = 0.1 and the start of the teacher warm-up tau_t = 0.04 (see
    `dino_teacher_temperature`); either may be a traced scalar.

    Args:
      student_outputs: `[n_crops, batch, dim]`, all crops, global ones first.
      teacher_outputs: `[n_global_crops, batch, dim]`, the teacher's outputs on the global crops.
      center: `[dim]`, the running centre c (see `dino_center_update`).
      student_temperature: tau_s.
      teacher_temperature: tau_t.
      n_global_crops: number of global crops; must equal `teacher_outputs.shape[0]`.

    Returns:
      A float32 scalar (float64 for float64 inputs).
    """
    n_crops, n_teacher = jnp.shape(student_outputs)[0], jnp.shape(teacher_outputs)[0]
    if n_teacher != n_global_crops:
        raise ValueError(f"teacher_outputs must hold n_global_crops={n_global_crops} crops; got {n_teacher}")
    if jnp.shape(student_outputs)[1:] != jnp.shape(teacher_outputs)[1:]:
        raise ValueError(
            "student_outputs and teacher_outputs must share [batch, dim]; got "
            f"{jnp.shape(student_outputs)[1:]} and {jnp.shape(teacher_outputs)[1:]}"
        )
    n_pairs = dino_pair_count(n_crops, n_global_crops)
    teacher = jax.lax.stop_gradient(_float32_or_wider(teacher_outputs) - jnp.asarray(center))
    teacher_probs = jnp.exp(_common.log_probs(teacher, teacher_temperature))
    student_log_probs = _common.log_probs(student_outputs, student_temperature)
    # cross[i, j] = sum_b sum_k -P_t^i[b, k] log P_s^j[b, k]; HIGHEST keeps the contraction in float32
    # on accelerators whose default matmul precision is lower.
    cross = -jnp.einsum("ibk,jbk->ij", teacher_probs, student_log_probs, precision=jax.lax.Precision.HIGHEST)
    off_diagonal = jnp.arange(n_global_crops)[:, None] != jnp.arange(n_crops)[None, :]
    total = jnp.sum(jnp.where(off_diagonal, cross, 0.0))
    return total / (n_pairs * jnp.shape(student_outputs)[1])


def dino_center_update(center: ArrayLike, teacher_outputs: ArrayLike, momentum=0.9, *, axis_name=None) -> Array:
    """DINO centre update, c <- m * c + (1 - m) * mean(g_t), the mean over crops and batch.

    Caron et al. 2021; the official code updates the centre after the loss with m = 0.9
    (`center_momentum`). Centring (subtracting c before the teacher softmax) together with
    sharpening (a low tau_t) is what keeps the EMA teacher from collapsing.

    Under data parallelism the mean must be over the *global* batch: the official code all-reduces
    the per-device sums and divides by the global count. Pass the mapped axis as `axis_name` (inside
    `pmap` / `shard_map`) and the local mean is averaged with `jax.lax.pmean`, which equals the global
    mean when every device holds the same number of samples.

    Args:
      center: `[dim]`.
      teacher_outputs: `[n_global_crops, batch, dim]` (any leading axes; all but the last are averaged).
      momentum: m in [0, 1].
      axis_name: None, or the name of the data-parallel axis to all-reduce over.

    Returns:
      The new centre `[dim]`, float32 (float64 for float64 inputs); no gradient flows through it.
    """
    outputs = jax.lax.stop_gradient(_float32_or_wider(teacher_outputs))
    batch_center = jnp.mean(outputs.reshape(-1, outputs.shape[-1]), axis=0)
    if axis_name is not None:
        batch_center = jax.lax.pmean(batch_center, axis_name)
    return momentum * jnp.asarray(center, batch_center.dtype) + (1.0 - momentum) * batch_center


def dino_teacher_temperature(epoch, warmup_epochs: int = 30, start=0.04, end=0.07) -> Array:
    """DINO teacher temperature: linear warm-up from `start` to `end`, then constant at `end`.

    The paper warms tau_t from 0.04 to 0.07 over the first 30 epochs (the defaults here). The
    official code builds the warm-up as `np.linspace(start, end, warmup_epochs)`, so `end` is reached
    at epoch `warmup_epochs - 1`; this function matches that table exactly:
        tau_t(e) = start + (end - start) * e / (warmup_epochs - 1)   for e < warmup_epochs,
        tau_t(e) = end                                               otherwise.
    (The official command-line defaults are 0.04 -> 0.04 with no warm-up; 0.07 is the paper's value.)

    Args:
      epoch: the current epoch (int or traced scalar), counted from 0.
      warmup_epochs: length of the warm-up; 0 gives `end` at every epoch.
      start, end: the temperatures at epoch 0 and after the warm-up.
    """
    end = jnp.asarray(end, jnp.float32)
    if warmup_epochs <= 0:
        return end
    epoch = jnp.asarray(epoch, jnp.float32)
    fraction = jnp.clip(epoch / max(warmup_epochs - 1, 1), 0.0, 1.0)
    warm = start + (end - start) * fraction
    return jnp.where(epoch >= warmup_epochs, end, warm)


def ema_momentum(step, total_steps, base=0.996) -> Array:
    """Cosine EMA-momentum schedule, m(step) = 1 - 0.5 * (1 - base) * (1 + cos(pi * step / total_steps)).

    DINO (Caron et al. 2021) raises the teacher momentum from `base` = 0.996 at step 0 to 1 at
    `total_steps`, following BYOL. The ratio step / total_steps is clipped to [0, 1], so the schedule
    stays at 1 past the end; `total_steps` < 1 counts as 1. (The official code's table has
    `total_steps` entries, so its last step is just below 1.)
    """
    fraction = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(total_steps, 1), 0.0, 1.0)
    return 1.0 - 0.5 * (1.0 - base) * (1.0 + jnp.cos(math.pi * fraction))


def ema_update(teacher_params, student_params, momentum):
    """EMA teacher update, theta_t <- m * theta_t + (1 - m) * theta_s, mapped over the parameter tree.

    The mix is computed in at least float32 and cast back to each teacher leaf's dtype; no gradient
    flows through the result. `momentum` may be a traced scalar (e.g. from `ema_momentum`).
    """

    def mix(teacher, student):
        teacher = jnp.asarray(teacher)
        mixed = momentum * _float32_or_wider(teacher) + (1.0 - momentum) * _float32_or_wider(student)
        return jax.lax.stop_gradient(mixed).astype(teacher.dtype)

    return jax.tree.map(mix, teacher_params, student_params)


def random_teacher_interpolation(teacher_params, random_params, a):
    """Variance-preserving interpolation between a teacher and a fresh random initialisation.

    Sarnthein et al. 2023, "Random Teachers are Good Teachers": the student starts at
        theta_s = ((1 - a) * theta_t + a * theta_rand) / sqrt(2a^2 - 2a + 1),
    mapped over the parameter tree. For independent theta_t, theta_rand of equal variance sigma^2,
    the numerator has variance ((1 - a)^2 + a^2) sigma^2 = (2a^2 - 2a + 1) sigma^2, so the divisor keeps
    the initialisation's scale. a = 0 returns the teacher (the paper's default: the student starts as a
    copy of the teacher), a = 1 the random parameters. Leaves keep their dtype.
    """
    scale = 1.0 / jnp.sqrt(2.0 * a * a - 2.0 * a + 1.0)

    def mix(teacher, random):
        teacher = jnp.asarray(teacher)
        mixed = ((1.0 - a) * _float32_or_wider(teacher) + a * _float32_or_wider(random)) * scale
        return mixed.astype(teacher.dtype)

    return jax.tree.map(mix, teacher_params, random_params)


def random_teacher_loss(student_outputs: ArrayLike, teacher_outputs: ArrayLike, *, temperature=1.0) -> Array:
    """Random-teacher distillation objective: batch mean of KL(P_t || P_s), P = softmax(g / T).

    Sarnthein et al. 2023 distil a frozen, randomly initialised teacher with the DINO objective
    stripped down: no centring, tau_t = tau_s = 1, a single view. The paper minimises the
    cross-entropy -sum_k P_t log P_s; this returns the KL, which differs from it by the teacher's
    entropy (a constant for a frozen teacher), so the gradient is the same and the loss is 0 when
    student and teacher agree. The teacher is wrapped in `stop_gradient`. No T^2 factor.

    Args:
      student_outputs, teacher_outputs: `[..., dim]`; every leading position counts equally.
      temperature: divides both outputs (default 1, as in the paper).
    """
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_outputs))
    return forward_kl(student_outputs, teacher, temperature=temperature)
