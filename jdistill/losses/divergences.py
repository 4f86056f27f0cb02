"""The divergence catalogue: one table from a name (`objective: NAME` in a config) to its function and its default
temperature scaling. Every consumer reads it: the kd recipe (and feature_kd through it), the chunked large-vocabulary
path, the cached top-k recipe and config validation.

Temperature scaling (docs/conventions.md, Temperatures). Hinton et al. 2015 multiply the softened KL by T^2: its
gradient with respect to the logits is (p_s - p_t) / T, so without T^2 the distillation term's gradient shrinks
like 1/T^2 against an unsoftened CE term. GKD-style objectives (Agarwal et al. 2024, "On-Policy Distillation of
Language Models") measure the divergence between the softened distributions themselves and do not rescale. So:

    forward_kl        T^2 by default   Hinton KD, the classic direction (KL(p_t || p_s))
    reverse_kl        no T^2           GKD's beta = 1 end (KL(p_s || p_t)), mode-seeking
    generalized_jsd   no T^2           GKD's objective, JSD_beta with M = beta p_t + (1 - beta) p_s
    tvd               no T^2           bounded f-divergence for sequence KD (Wen et al. 2023)
    uld               no T^2           Universal Logit Distillation (Boizard et al. 2024): L1 between the sorted
                                       probabilities, for teachers whose vocabulary differs from the student's

An explicit `scale_by_temperature_squared` (true or false) always overrides the entry's default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jdistill.errors import ConfigError
from jdistill.losses._common import Reduced
from jdistill.losses.logits import forward_kl, generalized_jsd, reverse_kl, tvd
from jdistill.losses.sparse import uld_loss


@dataclasses.dataclass(frozen=True)
class Divergence:
    """One catalogue entry.

    fn: `fn(student_logits, teacher_logits, *, temperature, mask, reduction[, beta])`, no T^2 inside.
    scale_by_temperature_squared: whether the objective is multiplied by T^2 when the caller does not say.
    takes_beta: whether `fn` takes the generalized-JSD `beta`.
    jsd_beta: the generalized-JSD beta this divergence equals (forward KL 0, reverse KL 1), None when it is not a
      fixed member of that family: the sparse top-k loss (`topk_kd`) is written in that family.
    convention: why the default scaling is what it is (one line).
    same_vocabulary: whether teacher and student logits must index the same vocabulary (False: `uld`, which
      compares sorted probabilities and takes two vocabulary sizes).
    """

    name: str
    fn: Callable[..., Reduced]
    scale_by_temperature_squared: bool
    takes_beta: bool
    jsd_beta: float | None
    convention: str
    same_vocabulary: bool = True

    def __call__(
        self, student_logits, teacher_logits, *, temperature=1.0, beta=0.5, mask=None, reduction: str = "mean"
    ) -> Reduced:
        """D(p_t, p_s) at temperature T, unscaled; `beta` reaches only the divergences that take it."""
        extra = {"beta": beta} if self.takes_beta else {}
        return self.fn(student_logits, teacher_logits, temperature=temperature, mask=mask, reduction=reduction, **extra)

    def temperature_scale(self, temperature, scale_by_temperature_squared: bool | None = None):
        """The factor c on D: T^2 or 1. `scale_by_temperature_squared` None takes this entry's default."""
        scaled = (
            self.scale_by_temperature_squared if scale_by_temperature_squared is None else scale_by_temperature_squared
        )
        return temperature**2 if scaled else 1.0

    def topk_beta(self, beta) -> float | None:
        """The generalized-JSD beta to hand `topk_kd` for this divergence (None: not expressible on a top-k cache)."""
        return beta if self.takes_beta else self.jsd_beta


DIVERGENCES: dict[str, Divergence] = {
    entry.name: entry
    for entry in (
        Divergence(
            "forward_kl",
            forward_kl,
            scale_by_temperature_squared=True,
            takes_beta=False,
            jsd_beta=0.0,
            convention="Hinton KD: T^2 keeps the gradient size independent of T",
        ),
        Divergence(
            "reverse_kl",
            reverse_kl,
            scale_by_temperature_squared=False,
            takes_beta=False,
            jsd_beta=1.0,
            convention="GKD-style (the beta = 1 end of the generalized JSD): no T^2",
        ),
        Divergence(
            "generalized_jsd",
            generalized_jsd,
            scale_by_temperature_squared=False,
            takes_beta=True,
            jsd_beta=None,
            convention="GKD-style (Agarwal et al. 2024): no T^2",
        ),
        Divergence(
            "tvd",
            tvd,
            scale_by_temperature_squared=False,
            takes_beta=False,
            jsd_beta=None,
            convention="GKD-style bounded distance (Wen et al. 2023): no T^2",
        ),
        Divergence(
            "uld",
            uld_loss,
            scale_by_temperature_squared=False,
            takes_beta=False,
            jsd_beta=None,
            convention="ULD (Boizard et al. 2024): sorted-probability L1, no T^2",
            same_vocabulary=False,
        ),
    )
}


def divergence(name: str) -> Divergence:
    """The catalogue entry called `name`; an unknown name is a one-line ConfigError listing the valid ones."""
    try:
        return DIVERGENCES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"objective: unknown divergence {name!r}; expected one of {', '.join(DIVERGENCES)}") from None
