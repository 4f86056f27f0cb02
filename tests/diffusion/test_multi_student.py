"""Multi-student distillation's split of the classes and its routing (jdistill.diffusion.methods.multi_student)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdistill.diffusion.methods.multi_student import classes_of, owner, select


@pytest.mark.parametrize("students", [1, 2, 3, 10])
def test_every_class_has_exactly_one_owner(students):
    blocks = [classes_of(k, students, 10) for k in range(students)]
    assert sorted(c for block in blocks for c in block) == list(range(10))
    for k, block in enumerate(blocks):
        assert list(np.asarray(owner(jnp.asarray(block), students, 10))) == [k] * len(block)
        assert block == tuple(range(block[0], block[-1] + 1))  # contiguous
    assert classes_of(0, 2, 10) == (0, 1, 2, 3, 4) and classes_of(1, 2, 10) == (5, 6, 7, 8, 9)


def test_select_keeps_each_examples_owners_sample():
    labels = jnp.array([0, 7, 4, 5, 9])
    samples = jnp.stack([jnp.full((5, 2, 2), 10.0 * k) + jnp.arange(5)[:, None, None] for k in range(2)])
    picked = select(samples, labels, 10)
    want = np.array([0, 1, 0, 1, 1]) * 10.0 + np.arange(5)
    np.testing.assert_array_equal(picked[:, 0, 0], want)


def test_a_students_labels_stay_in_its_block(monkeypatch):
    import types

    from jdistill.diffusion.schedules import EDM
    from jdistill.recipes import diffusion_distill_base as base
    from jdistill.recipes.diffusion_sid import DiffusionSiD

    teacher = types.SimpleNamespace(model=types.SimpleNamespace(num_classes=10), schedule=EDM())
    monkeypatch.setattr(base, "trained_teacher", lambda run_dir: teacher)
    r = DiffusionSiD(teacher_run="fake", num_students=2, student_index=1)
    labels = np.asarray(r.draw_labels(jax.random.key(0), 512))
    assert set(labels) == {5, 6, 7, 8, 9}
    with pytest.raises(ValueError, match="student_index"):
        DiffusionSiD(teacher_run="fake", num_students=2, student_index=2)
