import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.diffusion.schedules import EDM, predict
from jdistill.recipes.diffusion_guidance import VARIANTS, DiffusionGuidance
from tests.diffusion.methods import fake_teacher


def recipe(**options):
    return DiffusionGuidance(**{"teacher_run": "fake", "guide_d_model": 8, **options})


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_starts_as_the_conditional_teacher_and_trains_only_its_part(monkeypatch, variant):
    teacher = fake_teacher.install(monkeypatch, EDM(), images=True)
    r = recipe(variant=variant)
    graphdef, params, state = fake_teacher.student_of(r, images=True)
    batch = fake_teacher.batch(images=True)
    x = 10.0 * jax.random.normal(jax.random.key(0), (fake_teacher.BATCH, 8, 8, 1))
    t, labels = jnp.full((fake_teacher.BATCH,), 1.5), batch["labels"]
    want = predict(EDM(), teacher.model, x, t, labels).x0
    scale = None if variant == "lora" else jnp.full((fake_teacher.BATCH,), 3.0)
    got = predict(EDM(), nnx.merge(graphdef, params), x, t, labels, scale).x0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # the guided target at w = 0 before training

    def f(params):
        student = nnx.merge(graphdef, r.forward_params(params))
        return r.loss(student, None, state, batch, jax.random.key(1))[0]

    value, grads = jax.value_and_grad(f)(params)
    assert np.isfinite(float(value)) and float(value) > 0
    moving = {
        name
        for name, grad in ((r_name(path), g) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0])
        if float(jnp.abs(grad).max()) > 0
    }
    assert moving and all(r.trainable(name) for name in moving)
    if variant == "student":
        assert any(not name.startswith("condition/guidance/") for name in moving)
    run, sampler_params = r.student_sampler(nnx.merge(graphdef, params), nfe=2)
    assert run(sampler_params, x, labels, jax.random.key(2)).shape == x.shape


def r_name(path):
    from jdistill.diffusion.methods.wrappers import path_name

    return path_name(path)


@pytest.mark.slow
def test_a_perfect_student_has_zero_loss(monkeypatch):
    # The teacher itself answers every w with (1 + w) x_c - w x_u when it is guided explicitly.
    teacher = fake_teacher.install(monkeypatch, EDM(), images=True)
    r = recipe(variant="lora", lora_guidance=0.0)
    graphdef, params, state = fake_teacher.student_of(r, images=True)
    value = r.loss(nnx.merge(graphdef, params), None, state, fake_teacher.batch(images=True), jax.random.key(0))[0]
    assert float(value) < 1e-10  # w = 0: the conditional teacher, which LoRA at B = 0 is
    del teacher


# Parameter paths of the four student modules (a guidance-conditioned DiT, LoRA and plug-and-play wrappers).
PATHS = {
    "student": ["blocks/0/attention/q/kernel", "condition/guidance/out/kernel", "out/kernel"],
    "adapter": ["blocks/0/attention/q/kernel", "condition/guidance/out/kernel", "condition/time/out/kernel"],
    "lora": ["base/blocks/0/mlp/up/kernel", "lora_a/0", "lora_b/0"],
    "guide": ["base/out/kernel", "guide/out/kernel", "guide/condition/guidance/hidden/bias"],
}
TRAINABLE = {
    "student": set(PATHS["student"]),
    "adapter": {"condition/guidance/out/kernel"},
    "lora": {"lora_a/0", "lora_b/0"},
    "guide": {"guide/out/kernel", "guide/condition/guidance/hidden/bias"},
}


def nested(paths):
    tree: dict = {}
    for path in paths:
        node = tree
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = jnp.ones((2,))
    return tree


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_variants_own_parameters_receive_gradient(monkeypatch, variant):
    fake_teacher.install(monkeypatch, EDM())
    r = recipe(variant=variant)
    params = nested(PATHS[variant])
    grads = jax.grad(lambda p: sum(jnp.sum(leaf) for leaf in jax.tree.leaves(r.forward_params(p))))(params)
    flowing = {r_name(path) for path, g in jax.tree_util.tree_flatten_with_path(grads)[0] if float(jnp.abs(g).max())}
    assert flowing == TRAINABLE[variant]
