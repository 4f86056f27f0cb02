"""Teacher objectives: denoising score matching (EDM), flow matching, and DDPM's noise regression; per-example
losses `[batch]` (mean over each example's dimensions), pure functions of arrays, plus `teacher_loss`, which draws
the times and the noise and evaluates a denoiser module (docs/diffusion.md).

Classifier-free guidance training (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"): `drop_labels`
replaces each label by the null class with probability `p` so one network learns both the conditional and the
unconditional denoiser.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jdistill.diffusion.schedules import EDM, RectifiedFlow, Schedule


def _per_example_mean(x):
    return jnp.mean(x.reshape(x.shape[0], -1), axis=-1)


def edm_loss(denoised, x0, sigma, sigma_data: float):
    """EDM denoising score matching (Karras et al. 2022, eq. 2 with the weighting of Table 1):

        L(sigma) = lambda(sigma) mean || D(x0 + sigma n; sigma) - x0 ||^2,   lambda = (sigma^2 + sd^2) / (sigma sd)^2

    `denoised` D `[batch, ...]`, `sigma` `[batch]`; lambda = 1 / c_out^2 makes it the unit-weight regression of the
    raw network output on its target (`EDM.raw_target`). Returns `[batch]`."""
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return weight * _per_example_mean((denoised - x0) ** 2)


def flow_matching_loss(velocity, x0, eps):
    """Conditional flow matching on the straight path x_t = (1 - t) x0 + t eps (Lipman et al. 2023, "Flow Matching
    for Generative Modeling"; Liu et al. 2023, "Flow Straight and Fast", rectified flow):

        L = mean || v(x_t, t) - (eps - x0) ||^2

    Its minimiser is the marginal velocity E[eps - x0 | x_t], whose ODE transports noise to data. Returns `[batch]`."""
    return _per_example_mean((velocity - (eps - x0)) ** 2)


def noise_prediction_loss(raw, target):
    """DDPM's simplified objective (Ho et al. 2020, eq. 14) in whichever parameterisation the VP schedule predicts:
    L = mean || raw - target ||^2 with target eps (or x0, or v = alpha eps - sigma x0). Returns `[batch]`."""
    return _per_example_mean((raw - target) ** 2)


def drop_labels(labels, rng, probability: float, null_label: int):
    """`labels` with each entry replaced by `null_label` with probability `probability` (CFG training)."""
    if probability <= 0.0:
        return labels
    dropped = jax.random.bernoulli(rng, probability, labels.shape)
    return jnp.where(dropped, null_label, labels)


def teacher_loss(schedule: Schedule, model, x0, rng, labels=None, *, label_dropout: float = 0.0, t=None, eps=None):
    """(per-example loss `[batch]`, times `[batch]`) of `model` on clean data `x0`: t from `schedule.sample_t` (or
    given), eps ~ N(0, I) (or given), x_t = alpha x0 + sigma eps, labels dropped to the null class with probability
    `label_dropout`; the loss is `edm_loss`, `flow_matching_loss` or `noise_prediction_loss` by family."""
    t_key, noise_key, label_key = jax.random.split(rng, 3)
    batch = x0.shape[0]
    t = schedule.sample_t(t_key, (batch,)) if t is None else jnp.broadcast_to(t, (batch,))
    eps = jax.random.normal(noise_key, x0.shape, x0.dtype) if eps is None else eps
    if labels is not None:
        labels = drop_labels(labels, label_key, label_dropout, model.null_label)
    x_t = schedule.add_noise(x0, eps, t)
    raw = model(x_t, t, labels)
    if isinstance(schedule, EDM):
        loss = edm_loss(schedule.to_x0(x_t, t, raw), x0, t, schedule.sigma_data)
    elif isinstance(schedule, RectifiedFlow):
        loss = flow_matching_loss(raw, x0, eps)
    else:
        loss = noise_prediction_loss(raw, schedule.raw_target(x0, eps, t))
    return loss, t
