"""Solver distillation: D-ODE and Simple and Fast Distillation.

- D-ODE (Kim, Kim & Yoon 2023, "Distilling ODE Solvers of Diffusion Models into Smaller Steps"): keep the denoiser
  and the solver, add one parameter lambda_i per step that mixes the current and the previous denoiser output,

      x0~_i = x0_i + lambda_i (x0_i - x0_{i-1})       (x0_{-1} := x0_0: the first step is unchanged),

  then take the base solver's step (DDIM here) with x0~_i. Only the lambdas are trained, so that the few-step
  endpoint matches the many-step solver's from the same noise: L(lambda) = E || x_few(lambda; z) - x_many(z) ||^2.
  lambda = 0 is the base solver exactly.
- SFD (Zhou et al. 2024, "Simple and Fast Distillation of Diffusion Models"): fine-tune the denoiser only at the
  k times a k-step sampler visits: from each visited state the student's single DDIM step must land where the
  teacher's M sub-steps land (`sfd_loss`). The student grid is every M-th point of the teacher's k M-step grid.
  SFD-v (same paper, the step-conditioned variant): one student for several step counts k, told k through a scalar
  input (1 / k); each training step draws k and takes SFD's loss on the k-step grid (`sfd_v_loss`).

Times in the schedule's own units (`jdistill.diffusion.schedules`); grids decreasing, noise end first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.methods.common import per_example_distance, teacher_trajectory
from jdistill.diffusion.schedules import Schedule, ddim_step

DenoiseFn = Callable[[Array, Array], Array]
ROLLOUTS = ("teacher", "student")


def dode_sample(denoise_fn: DenoiseFn, x_start: ArrayLike, schedule: Schedule, grid, lambdas: ArrayLike) -> Array:
    """The D-ODE DDIM solver along `grid [n + 1]` with `lambdas [n]` (one per step); one `lax.scan`. `denoise_fn(x,
    t)` gets the grid time as a scalar, like `jdistill.diffusion.samplers.sample`."""
    x_start = jnp.asarray(x_start)
    grid = jnp.asarray(np.asarray(grid), jnp.float32)
    lambdas = jnp.asarray(lambdas, jnp.float32)

    def step(carry, inputs):
        x, previous, first = carry
        t, s, lam = inputs
        x0 = denoise_fn(x, t)
        previous = jnp.where(first, x0, previous)
        mixed = x0 + lam * (x0 - previous)
        return (ddim_step(schedule, x, t, s, mixed), x0, False), None

    init = (x_start, jnp.zeros_like(x_start), True)
    (x, _, _), _ = jax.lax.scan(step, init, (grid[:-1], grid[1:], lambdas))
    return x


def dode_loss(
    lambdas: ArrayLike, denoise_fn: DenoiseFn, x_start: ArrayLike, schedule: Schedule, grid, target: ArrayLike
) -> Array:
    """E || dode_sample(lambdas) - x_many ||^2 (mean over every number): `target` is the many-step solver's output
    from the same `x_start`, held fixed."""
    sample = dode_sample(denoise_fn, x_start, schedule, grid, lambdas)
    return jnp.mean((sample - jax.lax.stop_gradient(jnp.asarray(target))) ** 2)


def fit_dode(
    denoise_fn: DenoiseFn,
    x_start: ArrayLike,
    target: ArrayLike,
    schedule: Schedule,
    grid,
    *,
    steps: int = 200,
    learning_rate: float = 0.01,
) -> tuple[Array, Array]:
    """(lambdas [n], loss per optimisation step [steps]): Adam on `dode_loss` from lambda = 0, the denoiser frozen,
    `steps` full-batch updates in one jitted `lax.scan` (D-ODE fits its parameters on one batch of samples)."""
    optimizer = optax.adam(learning_rate)
    grad_fn = jax.value_and_grad(dode_loss)

    @jax.jit
    def run(x_start, target):
        lambdas = jnp.zeros(len(grid) - 1, jnp.float32)

        def update(carry, _):
            lambdas, opt_state = carry
            loss, grads = grad_fn(lambdas, denoise_fn, x_start, schedule, grid, target)
            updates, opt_state = optimizer.update(grads, opt_state, lambdas)
            return (optax.apply_updates(lambdas, updates), opt_state), loss

        (lambdas, _), losses = jax.lax.scan(update, (lambdas, optimizer.init(lambdas)), None, length=steps)
        return lambdas, losses

    return run(jnp.asarray(x_start), jnp.asarray(target))


def sfd_grids(teacher_grid, substeps: int) -> np.ndarray:
    """The student's grid: every `substeps`-th point of the teacher's (whose length - 1 must be a multiple)."""
    teacher_grid = np.asarray(teacher_grid)
    if substeps < 1 or (len(teacher_grid) - 1) % substeps:
        raise ValueError(f"the teacher grid's {len(teacher_grid) - 1} steps are not a multiple of {substeps}")
    return teacher_grid[::substeps]


def sfd_loss(
    student_x0: DenoiseFn,
    teacher_x0: DenoiseFn,
    x_start: ArrayLike,
    schedule: Schedule,
    teacher_grid,
    substeps: int,
    *,
    metric: str = "l1",
    rollout: str = "teacher",
) -> tuple[Array, Array]:
    """(loss, the student's last state): the mean over the k student steps of d(student step, teacher sub-steps).

    Step i starts at x_i (time T_i of the student grid `sfd_grids(teacher_grid, substeps)`): the student takes one
    DDIM step T_i -> T_{i+1} with its x0 prediction, the teacher `substeps` DDIM steps along its own grid; the
    distance is taken per example (`metric`, SFD uses l1 / LPIPS) and averaged. `rollout`: the next x_i is the
    teacher's state ("teacher", the default: the student is trained on the teacher's trajectory) or the student's
    own, held fixed ("student": trained where it samples). With substeps = 1 and the student equal to the teacher
    the loss is 0. `teacher_grid` is a static numpy array; k is unrolled (it is small).
    """
    if rollout not in ROLLOUTS:
        raise ValueError(f"rollout must be one of {ROLLOUTS}, got {rollout!r}")
    teacher_grid = np.asarray(teacher_grid, np.float64)
    student_grid = sfd_grids(teacher_grid, substeps)
    x = jnp.asarray(x_start)
    batch = x.shape[0]
    losses = []
    for i in range(len(student_grid) - 1):
        sub_grid = teacher_grid[i * substeps : (i + 1) * substeps + 1]
        teacher_next = teacher_trajectory(teacher_x0, x, sub_grid, schedule)[-1]
        t, s = (jnp.full((batch,), value, jnp.float32) for value in student_grid[i : i + 2])
        student_next = ddim_step(schedule, x, t, s, student_x0(x, t))
        losses.append(jnp.mean(per_example_distance(student_next, jax.lax.stop_gradient(teacher_next), metric)))
        x = jax.lax.stop_gradient(teacher_next if rollout == "teacher" else student_next)
    return jnp.mean(jnp.stack(losses)), x


def step_condition(steps: int) -> float:
    """The scalar an SFD-v student is conditioned on when it samples with `steps` steps: 1 / steps (the step size of
    the unit interval, as the shortcut model's h)."""
    return 1.0 / steps


def sfd_v_loss(
    student_x0_at: Callable[[float], DenoiseFn],
    teacher_x0: DenoiseFn,
    x_start: ArrayLike,
    schedule: Schedule,
    step_counts: Sequence[int],
    substeps: int,
    index: ArrayLike,
    *,
    metric: str = "l1",
    rollout: str = "teacher",
) -> Array:
    """SFD-v: `sfd_loss` for k = step_counts[index] student steps, on the grid `schedule.timesteps(k substeps)`,
    with the student's x0 function `student_x0_at(step_condition(k))` (conditioned on k). `index`: an int32 scalar
    (traced; the recipe draws it uniformly each step); one `lax.switch` branch per count, so only the drawn one runs.
    With a single count it is `sfd_loss` of the student conditioned on it."""
    counts = [int(k) for k in step_counts]
    if not counts or min(counts) < 1:
        raise ValueError(f"step_counts must be a non-empty list of counts >= 1, got {list(step_counts)}")

    def branch(k: int):
        grid = schedule.timesteps(k * substeps)
        student_x0 = student_x0_at(step_condition(k))
        options = {"metric": metric, "rollout": rollout}
        return lambda x: sfd_loss(student_x0, teacher_x0, x, schedule, grid, substeps, **options)[0]

    return jax.lax.switch(jnp.asarray(index, jnp.int32), [branch(k) for k in counts], jnp.asarray(x_start))
