"""Image-free continuous-time consistency distillation with trajectory-sampled pairs (Tang et al. 2025, "Image-Free
Timestep Distillation via Continuous-Time Consistency with Trajectory-Sampled Pairs", TBCM).

No data: the training points are states of the teacher's own probability-flow ODE, integrated from pure noise
(`common.teacher_trajectory`, `trajectory_points`), so the student trains where it will sample. The consistency
condition is imposed in continuous time (Lu & Song 2024, sCM): along the ODE, the consistency function is constant,

    d/dt f(x_t, t) = (df/dx) (dx_t/dt) + df/dt = 0,

and the tangent g = d/dt f_theta-(x_t, t) is one Jacobian-vector product (`consistency_tangent`) along the teacher's
ODE velocity dx_t/dt (`Schedule.velocity_from_x0` of the teacher's x0 estimate). The loss

    L = E || f_theta(x_t, t) - sg( f_theta-(x_t, t) - g~ ) ||^2,   g~ = g / (||g|| + c)  (tangent normalisation)

has the gradient 2 J_theta^T g~ at theta = theta-: the limit, as the step goes to 0, of the discrete consistency loss
divided by the step. An exact consistency function has g = 0: zero loss and zero gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jdistill.diffusion.schedules import expand_to


def consistency_tangent(
    f_fn: Callable[[Array, Array], Array], x_t: ArrayLike, t: ArrayLike, dxdt: ArrayLike
) -> tuple[Array, Array]:
    """(f(x_t, t), d/dt f(x(t), t)) along the ODE direction `dxdt`, by one `jax.jvp` through `f_fn(x, t [batch])`."""
    x_t = jnp.asarray(x_t)
    t = jnp.asarray(t, jnp.float32)
    return jax.jvp(f_fn, (x_t, t), (jnp.asarray(dxdt, x_t.dtype), jnp.ones_like(t)))


def continuous_consistency_loss(
    online: ArrayLike, target: ArrayLike, tangent: ArrayLike, *, normalize_tangent: bool = True, c: float = 0.1
) -> Array:
    """mean_i mean((f_theta - sg(f_theta- - g~))^2), `online` = f_theta(x_t, t), `target` = f_theta-(x_t, t),
    `tangent` = d/dt f_theta- along the ODE, all `[batch, ...]`. g~ = g / (||g||_i / sqrt(d) + c) per example when
    `normalize_tangent` (sCM's tangent normalisation, which keeps the update bounded), else g."""
    online = jnp.asarray(online, jnp.float32)
    tangent = jnp.asarray(tangent, jnp.float32)
    if normalize_tangent:
        flat = tangent.reshape(tangent.shape[0], -1)
        norm = jnp.sqrt(jnp.mean(flat**2, axis=-1))
        tangent = tangent / expand_to(norm + c, tangent)
    goal = jax.lax.stop_gradient(jnp.asarray(target, jnp.float32) - tangent)
    return jnp.mean(jnp.mean((online - goal).reshape(online.shape[0], -1) ** 2, axis=-1))


def trajectory_points(key: Array, states: ArrayLike, grid: ArrayLike, exclude_last: bool = True) -> tuple[Array, Array]:
    """(x [batch, ...], t [batch]): for each example one state of its own trajectory (`teacher_trajectory`'s
    output) at a uniformly drawn grid index; the clean end is excluded by default (there f is the identity)."""
    states, grid = jnp.asarray(states), jnp.asarray(grid, jnp.float32)
    batch = states.shape[1]
    high = grid.shape[0] - 1 if exclude_last else grid.shape[0]
    index = jax.random.randint(key, (batch,), 0, high)
    return states[index, jnp.arange(batch)], grid[index]
