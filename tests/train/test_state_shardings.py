"""Shardings follow the logical axes declared on the parameters, and the one rule table reaches every consumer:
parameters, optimizer moments, EMA teachers and snapshot stacks, teachers, batches, the layers' activation
constraints and the per-shard attention kernels. In-process on an abstract (data 2, fsdp 2, tensor 2) mesh: no
devices needed; the sharded step itself runs in test_sharding.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jdistill.configs import TrainConfig
from jdistill.errors import UserError
from jdistill.kernels import gated_attention
from jdistill.models import ModelConfig, Transformer
from jdistill.nn.params import dense
from jdistill.partitioning import axis_rules
from jdistill.recipes.dino import copy_params
from jdistill.train import sharding
from jdistill.train.optim import make_optimizer
from jdistill.train.state import TrainState

MESH = AbstractMesh((2, 2, 2, 1), sharding.MESH_AXES)
CONFIG = ModelConfig(kind="lm", num_layers=1, d_model=16, num_heads=2, mlp_dim=32, vocab_size=32, max_seq_len=8)


def _specs(tree):
    """{path: PartitionSpec} of a sharding tree."""
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: isinstance(x, (jax.sharding.Sharding, nnx.Variable))
    )
    return {
        jax.tree_util.keystr(path): (leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf).spec
        for path, leaf in leaves
    }


@pytest.fixture(scope="module")
def state():
    _, params = nnx.split(nnx.eval_shape(lambda: Transformer(CONFIG, rngs=nnx.Rngs(0))))
    optimizer = make_optimizer(TrainConfig(steps=2, warmup_steps=1))
    stacked = jax.tree.map(lambda p: jax.ShapeDtypeStruct((3, *p.shape), p.dtype), params)
    recipe_state = {
        "teacher": jax.eval_shape(copy_params, params),
        "snapshots": stacked,
        "center": jax.ShapeDtypeStruct((32,), jnp.float32),
    }
    return TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=jax.eval_shape(optimizer.init, params),
        recipe_state=recipe_state,
    )


def test_parameters_are_sharded_by_their_declared_axes(state):
    specs = _specs(sharding.param_shardings(state.params, MESH, sharding.DEFAULT_RULES))
    assert specs["['embed']['embedding']"] == P("tensor", "fsdp")
    assert specs["['head']['kernel']"] == P("fsdp", "tensor")
    assert specs["['blocks'][0]['attention']['output']['kernel']"] == P("tensor", "fsdp")
    assert specs["['blocks'][0]['mlp']['up']['kernel']"] == P("fsdp", "tensor")
    assert specs["['blocks'][0]['mlp']['down']['bias']"] == P("fsdp")
    assert specs["['final_norm']['scale']"] == P(None)


def test_config_rules_change_the_parameter_layout(state):
    rules = sharding.resolve_rules({"mlp": None, "embed": ["fsdp", "data"]})
    specs = _specs(sharding.param_shardings(state.params, MESH, rules))
    assert specs["['blocks'][0]['mlp']['up']['kernel']"] == P(("fsdp", "data"), None)


def test_optimizer_moments_ema_teacher_and_snapshots_follow_their_parameter(state):
    shardings = sharding.state_shardings(state, MESH, sharding.DEFAULT_RULES)
    params = _specs(shardings.params)
    opt = _specs(shardings.opt_state)
    for moment in (".mu", ".nu"):  # AdamW's moments, each with its parameter's spec
        assert {path.split(moment)[-1]: spec for path, spec in opt.items() if moment in path} == params
    assert all(spec == P() for path, spec in opt.items() if ".mu" not in path and ".nu" not in path)
    recipe = _specs(shardings.recipe_state)
    assert {
        path[len("['teacher']") :]: spec for path, spec in recipe.items() if path.startswith("['teacher']")
    } == params
    snapshots = {
        path[len("['snapshots']") :]: spec for path, spec in recipe.items() if path.startswith("['snapshots']")
    }
    assert snapshots == {path: P(None, *spec) for path, spec in params.items()}
    assert recipe["['center']"] == P()
    assert _specs(shardings.step) == {"": P()}


def test_a_parameter_without_logical_axes_is_an_error():
    class Student(nnx.Module):
        def __init__(self):
            self.annotated = dense(4, 4, ("embed", "mlp"), rngs=nnx.Rngs(0))
            self.renamed = nnx.Linear(4, 4, rngs=nnx.Rngs(0))

    _, params = nnx.split(Student())
    with pytest.raises(ValueError, match=r"\['renamed'\]\['bias'\].*no logical axes"):
        sharding.param_shardings(params, MESH, sharding.DEFAULT_RULES)


def test_unknown_rule_names_and_mesh_axes_are_config_errors():
    with pytest.raises(UserError, match=r"mesh.rules.mpl: not a logical axis"):
        sharding.resolve_rules({"mpl": "tensor"})
    with pytest.raises(UserError, match=r"mesh.rules.mlp: 'model' is not a mesh axis"):
        sharding.resolve_rules({"mlp": "model"})


def _constraint_specs(fn, *args, rules):
    """The PartitionSpecs of every sharding constraint `fn(*args)` traces on MESH under `rules`."""
    with jax.sharding.use_abstract_mesh(MESH), axis_rules(rules):
        jaxpr = jax.make_jaxpr(fn)(*args)
    return [eqn.params["sharding"].spec for eqn in _eqns(jaxpr.jaxpr) if eqn.primitive.name == "sharding_constraint"]


def _eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _eqns(inner)


def test_the_batch_rule_reaches_the_layers_activation_constraints():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((8, 8), jnp.int32)
    # a new function per trace: jit caches traces by function, and the rules are read while tracing
    default = _constraint_specs(lambda tokens: model(tokens).logits, tokens, rules=sharding.DEFAULT_RULES)
    assert default and all(spec == P(("data", "fsdp"), None, None) for spec in default)
    data_only = _constraint_specs(
        lambda tokens: model(tokens).logits, tokens, rules=sharding.resolve_rules({"batch": "data"})
    )
    assert len(data_only) == len(default) and all(spec == P("data", None, None) for spec in data_only)


def _shard_map_specs(rules, kv_heads=2):
    q = jnp.zeros((8, 16, 2, 16), jnp.float32)
    k = jnp.zeros((8, 16, kv_heads, 16), jnp.float32)
    with jax.sharding.use_abstract_mesh(MESH), axis_rules(rules):
        jaxpr = jax.make_jaxpr(lambda q, k: gated_attention(q, k, k, None, causal=True, impl="interpret"))(q, k)
    (eqn,) = [eqn for eqn in _eqns(jaxpr.jaxpr) if eqn.primitive.name == "shard_map"]
    return eqn.params["in_specs"]


def test_the_batch_and_heads_rules_reach_the_per_shard_attention_kernel():
    assert _shard_map_specs(sharding.DEFAULT_RULES)[0] == P(("data", "fsdp"), None, "tensor", None)
    assert _shard_map_specs(sharding.resolve_rules({"batch": "fsdp", "heads": None}))[0] == P("fsdp", None, None, None)
    assert _shard_map_specs(sharding.DEFAULT_RULES, kv_heads=1)[0] == P(("data", "fsdp"), None, None, None)


def test_batches_use_the_batch_rule():
    batch = {"inputs": np.zeros((8, 4), np.int32), "index": np.zeros((3,), np.int32)}
    specs = _specs(sharding.batch_shardings(batch, MESH, sharding.resolve_rules({"batch": "data"})))
    assert specs == {"['inputs']": P("data", None), "['index']": P()}
