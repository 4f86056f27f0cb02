"""The kd recipe trains the objective it is configured with: for every divergence (and a few GKD betas) its loss is
`distill_weight * c * D(student, teacher at T) + label_weight * CE(y, student)`, with D the function of that name in
`jdistill.losses` and c = T^2 for Hinton's forward-KL KD by default, 1 for the GKD-style divergences by default
(docs/conventions.md, Temperatures), whatever an explicit `scale_by_temperature_squared` says otherwise. Dense and
vocabulary-chunked heads alike."""

import jax.numpy as jnp
import numpy as np
import pytest

from jdistill import losses
from jdistill.models.outputs import ModelOutput
from jdistill.recipes import KnowledgeDistillation

VOCAB = 24
TEMPERATURE, DISTILL_WEIGHT, LABEL_WEIGHT = 2.5, 0.7, 0.3
OBJECTIVES = [
    ("forward_kl", None),
    ("reverse_kl", None),
    ("tvd", None),
    ("generalized_jsd", 0.0),
    ("generalized_jsd", 0.1),
    ("generalized_jsd", 0.5),
    ("generalized_jsd", 0.9),
    ("generalized_jsd", 1.0),
]
IDS = [name if beta is None else f"{name}_beta{beta}" for name, beta in OBJECTIVES]


class FixedLM:
    """A stand-in model with fixed final features and head: `recipe.loss` sees the same logits on every call, so
    the test checks the objective and not the transformer (and runs in milliseconds)."""

    def __init__(self, features, kernel, bias):
        self.features, self.kernel, self.bias = features, kernel, bias

    def __call__(self, inputs, logits=True):
        del inputs
        return ModelOutput(logits=self.features @ self.kernel + self.bias if logits else None, features=self.features)

    def head_weights(self):
        return self.kernel, self.bias


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    student = FixedLM(normal(3, 9, 16), normal(16, VOCAB) * 0.5, normal(VOCAB))
    teacher = FixedLM(normal(3, 9, 20), normal(20, VOCAB) * 0.5, normal(VOCAB))
    batch = {
        "inputs": None,
        "targets": jnp.asarray(rng.integers(0, VOCAB, (3, 9)), jnp.int32),
        "mask": jnp.asarray(rng.random((3, 9)) > 0.3),
    }
    return student, teacher, batch, student(None).logits, teacher(None).logits


def _expected(setup, objective, beta, scale):
    _, _, batch, student_logits, teacher_logits = setup
    extra = {"beta": beta} if objective == "generalized_jsd" else {}
    divergence = getattr(losses, objective)(
        student_logits, teacher_logits, temperature=TEMPERATURE, mask=batch["mask"], **extra
    )
    ce = losses.cross_entropy(student_logits, batch["targets"], mask=batch["mask"])
    return DISTILL_WEIGHT * scale * float(divergence) + LABEL_WEIGHT * float(ce)


def _recipe_loss(setup, **options):
    student, teacher, batch, _, _ = setup
    recipe = KnowledgeDistillation(
        temperature=TEMPERATURE, distill_weight=DISTILL_WEIGHT, label_weight=LABEL_WEIGHT, **options
    )
    (total, count), _, _ = recipe.loss(student, teacher, (), batch, None)
    return float(total) / float(count)


@pytest.mark.parametrize("vocab_chunk", [0, 8], ids=["dense", "chunked"])
@pytest.mark.parametrize("objective, beta", OBJECTIVES, ids=IDS)
def test_default_scaling(setup, objective, beta, vocab_chunk):
    """T^2 by default for forward_kl (Hinton KD) only."""
    options = {"objective": objective, "vocab_chunk": vocab_chunk}
    if beta is not None:
        options["beta"] = beta
    scale = TEMPERATURE**2 if objective == "forward_kl" else 1.0
    assert _recipe_loss(setup, **options) == pytest.approx(_expected(setup, objective, beta, scale), rel=2e-5)


@pytest.mark.parametrize("vocab_chunk", [0, 8], ids=["dense", "chunked"])
@pytest.mark.parametrize("objective, beta", OBJECTIVES, ids=IDS)
def test_an_explicit_scaling_overrides_the_default(setup, objective, beta, vocab_chunk):
    scaled = objective != "forward_kl"  # the opposite of the default
    options = {"objective": objective, "vocab_chunk": vocab_chunk, "scale_by_temperature_squared": scaled}
    if beta is not None:
        options["beta"] = beta
    scale = TEMPERATURE**2 if scaled else 1.0
    assert _recipe_loss(setup, **options) == pytest.approx(_expected(setup, objective, beta, scale), rel=2e-5)


def test_the_objectives_differ_on_these_logits(setup):
    """Guards the tests above: every objective gives a different value here, so a recipe that trained another
    objective (or ignored beta) than the one configured cannot pass them."""
    distinct = [(name, beta) for name, beta in OBJECTIVES if beta not in (0.0, 1.0)]  # jsd's ends are the KLs
    values = [_expected(setup, objective, beta, 1.0) for objective, beta in distinct]
    assert min(abs(a - b) for i, a in enumerate(values) for b in values[i + 1 :]) > 1e-3
