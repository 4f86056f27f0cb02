"""Mutual learning: both peers get gradients, each is taught by the other (its gradient is exactly that of
CE + T^2 KL towards the other's fixed prediction), identical peers teach nothing, and the preset runs."""

import jax
import numpy as np
from flax import nnx

from jdistill.configs import load_config
from jdistill.losses import kd
from jdistill.models import count_params
from jdistill.recipes.mutual import MutualLearning, PeerStudents
from jdistill.train.job import run_job
from tests.recipes.family_a import train_log
from tests.recipes.ssl_robust_helpers import (
    CONFIG,
    FAST,
    batch,
    leaves,
    tiny_job,
    tiny_model,
)

DATA = batch()


def _grads(recipe, module):
    graphdef, params = nnx.split(module)

    def loss(params):
        return recipe.loss(nnx.merge(graphdef, params), None, (), DATA, None)[0]

    return jax.grad(loss)(params)


def _peers():
    return recipe().wraps_student()(CONFIG, nnx.Rngs(params=0))


def recipe(**kwargs):
    return MutualLearning(**{"temperature": 2.0, **kwargs})


def test_wrapper_builds_independent_peers_and_evaluates_the_first():
    peers = _peers()
    assert isinstance(peers, PeerStudents) and len(peers.peers) == 2
    assert count_params(peers) == 2 * count_params(tiny_model())
    np.testing.assert_array_equal(peers(DATA["inputs"]).logits, peers.peers[0](DATA["inputs"]).logits)
    assert not np.allclose(peers.peers[0](DATA["inputs"]).logits, peers.peers[1](DATA["inputs"]).logits)


def test_both_peers_get_the_gradient_of_their_own_objective_towards_the_other():
    peers = _peers()
    grads = _grads(recipe(), peers)
    norms = [sum(float(np.abs(g).sum()) for g in leaves(grads["peers"][k])) for k in range(2)]
    assert min(norms) > 0
    # Peer k's gradient is that of CE(y, z_k) + T^2 KL(p_other || p_k) with the other peer fixed.
    for k, other in ((0, 1), (1, 0)):
        graphdef, params = nnx.split(peers.peers[k])
        target = peers.peers[other](DATA["inputs"]).logits

        def own(params, graphdef=graphdef, target=target):
            logits = nnx.merge(graphdef, params)(DATA["inputs"]).logits
            return kd(logits, target, DATA["labels"], temperature=2.0, distill_weight=1.0, label_weight=1.0)

        for a, b in zip(leaves(jax.grad(own)(params)), leaves(grads["peers"][k]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_identical_peers_without_labels_teach_each_other_nothing():
    peers = _peers()
    graphdef, params = nnx.split(peers)
    params["peers"][1] = jax.tree.map(lambda x: x.copy(), params["peers"][0])
    grads = _grads(recipe(label_weight=0.0), nnx.merge(graphdef, params))
    assert max(float(np.abs(g).max()) for g in leaves(grads)) < 1e-6


def test_mutual_preset_trains_both_peers(tmp_path, untrained):
    config = load_config("mutual", tiny_job(steps=40, extra=FAST))
    summary = run_job(config, tmp_path / "run", progress=False)
    metrics, before = summary["student_mutual"], untrained(config)
    peer1 = train_log(tmp_path / "run", "student_mutual", "accuracy_peer1")
    assert metrics["accuracy"] > before["accuracy"] + 0.15 and metrics["nll"] < before["nll"] - 0.4
    assert metrics["params"] == 2 * count_params(tiny_model())
    assert sum(peer1[-5:]) / 5 > sum(peer1[:5]) / 5 + 0.15  # the second peer learns too
