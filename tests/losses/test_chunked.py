"""Chunked large-vocabulary objectives equal the dense ones and need far less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.errors import ConfigError
from jdistill.losses import cross_entropy, forward_kl, generalized_jsd, reverse_kl, tvd
from jdistill.losses.chunked import chunked_distillation_loss

DENSE = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "tvd": tvd,
    "generalized_jsd": lambda s, t, **kw: generalized_jsd(s, t, beta=0.3, **kw),
}


def _problem(batch=2, seq=37, d_student=16, d_teacher=24, vocab=300, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    return dict(
        student_hidden=jax.random.normal(keys[0], (batch, seq, d_student)),
        teacher_hidden=jax.random.normal(keys[1], (batch, seq, d_teacher)),
        student_head=0.3 * jax.random.normal(keys[2], (d_student, vocab)),
        teacher_head=0.3 * jax.random.normal(keys[3], (d_teacher, vocab)),
        labels=jax.random.randint(keys[4], (batch, seq), 0, vocab),
        mask=jax.random.uniform(keys[5], (batch, seq)) > 0.3,
    )


# The chunked path reads the divergence catalogue's default temperature scaling: T^2 for Hinton's forward KL only.
DEFAULT_T2 = {"forward_kl": True, "reverse_kl": False, "generalized_jsd": False, "tvd": False}


def _dense(p, objective, temperature, label_weight, student_head=None, scale_by_temperature_squared=None):
    head = p["student_head"] if student_head is None else student_head
    student, teacher = p["student_hidden"] @ head, p["teacher_hidden"] @ p["teacher_head"]
    loss = DENSE[objective](student, teacher, temperature=temperature, mask=p["mask"])
    scaled = DEFAULT_T2[objective] if scale_by_temperature_squared is None else scale_by_temperature_squared
    loss = loss * (temperature**2 if scaled else 1.0)
    return loss + label_weight * cross_entropy(student, p["labels"], mask=p["mask"])


@pytest.mark.parametrize("objective", sorted(DENSE))
@pytest.mark.parametrize("chunk_size", [16, 74, 1000])
def test_chunked_equals_dense_in_value_and_gradient(objective, chunk_size):
    p = _problem()
    chunked = lambda head: chunked_distillation_loss(
        p["student_hidden"],
        head,
        p["teacher_hidden"],
        p["teacher_head"],
        p["labels"],
        objective=objective,
        beta=0.3,
        temperature=2.0,
        label_weight=0.5,
        mask=p["mask"],
        chunk_size=chunk_size,
    )
    dense = lambda head: _dense(p, objective, 2.0, 0.5, head)
    np.testing.assert_allclose(chunked(p["student_head"]), dense(p["student_head"]), rtol=1e-5)
    np.testing.assert_allclose(
        jax.grad(chunked)(p["student_head"]), jax.grad(dense)(p["student_head"]), rtol=1e-4, atol=1e-7
    )


@pytest.mark.parametrize("objective", sorted(DENSE))
@pytest.mark.parametrize("scale_by_temperature_squared", [True, False])
def test_explicit_temperature_scaling_overrides_the_default(objective, scale_by_temperature_squared):
    p = _problem(seq=9)
    chunked = chunked_distillation_loss(
        p["student_hidden"],
        p["student_head"],
        p["teacher_hidden"],
        p["teacher_head"],
        p["labels"],
        objective=objective,
        beta=0.3,
        temperature=3.0,
        mask=p["mask"],
        chunk_size=8,
        scale_by_temperature_squared=scale_by_temperature_squared,
    )
    np.testing.assert_allclose(chunked, _dense(p, objective, 3.0, 0.0, None, scale_by_temperature_squared), rtol=1e-5)


def test_unknown_objective_is_a_one_line_config_error():
    p = _problem(seq=4)
    with pytest.raises(ConfigError, match="unknown divergence 'kl'; expected one of forward_kl, reverse_kl"):
        chunked_distillation_loss(
            p["student_hidden"], p["student_head"], p["teacher_hidden"], p["teacher_head"], objective="kl"
        )


def test_sum_count_and_all_masked():
    p = _problem()
    total, count = chunked_distillation_loss(
        p["student_hidden"],
        p["student_head"],
        p["teacher_hidden"],
        p["teacher_head"],
        mask=p["mask"],
        chunk_size=32,
        reduction="sum_count",
    )
    assert float(count) == float(p["mask"].sum())
    np.testing.assert_allclose(total / count, _dense(p, "forward_kl", 1.0, 0.0), rtol=1e-5)
    zero = chunked_distillation_loss(
        p["student_hidden"],
        p["student_head"],
        p["teacher_hidden"],
        p["teacher_head"],
        mask=jnp.zeros_like(p["mask"]),
        chunk_size=32,
    )
    assert float(zero) == 0.0


def test_teacher_gets_no_gradient():
    p = _problem()
    grad = jax.grad(
        lambda head: chunked_distillation_loss(
            p["student_hidden"], p["student_head"], p["teacher_hidden"], head, chunk_size=32
        )
    )
    assert float(jnp.abs(grad(p["teacher_head"])).max()) == 0.0


def test_chunked_peak_memory_is_below_dense_at_large_vocab():
    batch, seq, dim, vocab = 2, 512, 64, 32768
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (spec(batch, seq, dim), spec(dim, vocab), spec(batch, seq, dim), spec(dim, vocab))

    def dense(sh, sw, th, tw):
        return forward_kl(sh @ sw, th @ tw, temperature=2.0)

    def chunked(sh, sw, th, tw):
        return chunked_distillation_loss(sh, sw, th, tw, temperature=2.0, chunk_size=64)

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = batch * seq * vocab * 4
    dense_bytes, chunked_bytes = temp_bytes(dense), temp_bytes(chunked)
    assert dense_bytes >= 2 * logits_bytes  # both models' full logits exist at once
    assert chunked_bytes < logits_bytes / 2  # not even one model's full logits
    assert chunked_bytes < dense_bytes / 8
