"""JEI-DNN: exit gates trained jointly with the exit heads (Regol, Chataoui and Coates 2024, "Jointly-Learned Exit
and Inference for a Dynamic Neural Network", ICLR; docs/early_exit.md#jei-dnn).

On a frozen backbone, each exit l (after block b_l, l = 1 .. E) has an inference module (IM) and a gate. Here
the IM is a zero-initialised residual adapter before the model's shared final norm and head,
`z_l = head(norm(h + h A_l + a_l))` (at initialisation LayerSkip's shared-head exit), and the gate reads the
IM's prediction, not the hidden state: `g_l = sigmoid(w_l . f(z_l) + c_l)` with f = (max probability, top-1 minus
top-2 probability, 1 - H(p) / log V). The gates define the probability of exiting at each exit (the final head,
l = E + 1, takes the rest):

    pi_l = g_l prod_{j<l} (1 - g_j),        pi_{E+1} = prod_{j<=E} (1 - g_j)

Training is the paper's bi-level problem, done as one step with stop-gradients separating the two levels:

    IMs:    L_IM   = mean_n sum_l (sg(pi_l(n)) + rho) CE_l(n)          each IM learns most on what exits there
    gates:  L_gate = mean_n sum_l pi_l(n) sg(CE_l(n) + lam c_l)         expected loss + lam x cost, IMs held

with c_l = b_l / L the fraction of blocks exit l costs, and the gate inputs f(z_l) stop-gradiented (the gates
do not move the IMs). Inference: a token exits at the first l with g_l >= tau (tau = 1/2: the exit the gate
model says is more likely than continuing) and reports that IM's softmax as its predictive distribution. No
confidence threshold is applied to the IM's own probabilities, so they carry no selection bias: the paper's
calibrated inference (the predictive probabilities at the chosen exits are as calibrated as the IMs).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NUM_FEATURES = 3
INITIAL_GATE_BIAS = -2.0  # g ~ 0.12: start close to the full model


def init_params(d_model: int, num_exits: int) -> dict:
    """Zero adapters (the IMs start as the shared head's exits) and gates at sigmoid(-2)."""
    return {
        "adapter": jnp.zeros((num_exits, d_model, d_model), jnp.float32),
        "adapter_bias": jnp.zeros((num_exits, d_model), jnp.float32),
        "gate_w": jnp.zeros((num_exits, NUM_FEATURES), jnp.float32),
        "gate_b": jnp.full((num_exits,), INITIAL_GATE_BIAS, jnp.float32),
    }


def gate_features(logits):
    """f(z) `[..., 3]`: max probability, top-1 minus top-2 probability, 1 - H(p) / log V."""
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(log_p)
    top2 = jax.lax.top_k(p, 2)[0]
    entropy = -jnp.sum(p * log_p, axis=-1)
    return jnp.stack([top2[..., 0], top2[..., 0] - top2[..., 1], 1.0 - entropy / jnp.log(logits.shape[-1])], axis=-1)


def im_logits(model, params: dict, hidden, exit_number: int):
    """IM `exit_number` (0-based) on its block's output `hidden [..., d]` -> logits `[..., vocab]`."""
    adapted = hidden + hidden @ params["adapter"][exit_number] + params["adapter_bias"][exit_number]
    return model._logits(model.final_norm(adapted))


def gate_logit(params: dict, logits, exit_number: int):
    """The gate's logit log(g / (1 - g)) at exit `exit_number` from that IM's logits."""
    return gate_features(logits) @ params["gate_w"][exit_number] + params["gate_b"][exit_number]


def exit_probabilities(gate_logits):
    """`gate_logits [E, ...]` -> pi `[E + 1, ...]` (sums to 1 over the first axis), in log space for stability."""
    log_g = jax.nn.log_sigmoid(gate_logits)
    log_not = jax.nn.log_sigmoid(-gate_logits)
    survive = jnp.concatenate([jnp.zeros_like(log_g[:1]), jnp.cumsum(log_not, axis=0)], axis=0)  # log prod_{j<l}
    return jnp.exp(survive + jnp.concatenate([log_g, jnp.zeros_like(log_g[:1])], axis=0))


def jei_loss(ce, gate_logits, costs, *, lam: float, rho: float = 0.1, mask=None):
    """(L_IM + L_gate, metrics) of the module docstring. `ce [E + 1, ...]` per-token cross-entropies of every IM
    and the final head, `gate_logits [E, ...]`, `costs [E + 1]` (fraction of blocks), `mask [...]` valid tokens."""
    pi = exit_probabilities(gate_logits)
    mean = _choice_mean(mask, ce.shape[1:])
    im = mean((jax.lax.stop_gradient(pi) + rho) * ce)
    gate, metrics = expected_loss_and_cost(pi, jax.lax.stop_gradient(ce), costs, lam=lam, mask=mask)
    return im + gate, {"im_loss": im, "gate_loss": gate, **metrics}


def _choice_mean(mask, shape):
    weight = jnp.ones(shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    return lambda x: jnp.sum(jnp.sum(x, axis=0) * weight) / count


def expected_loss_and_cost(pi, ce, costs, *, lam: float, mask=None):
    """The cost-aware routing objective `mean_n sum_k pi_k(n) (CE_k(n) + lam c_k)` over the choices k (exits,
    skipped spans, numbers of learners) with probabilities `pi [K, ...]`, per-token losses `ce [K, ...]` (pass them
    stop-gradiented to train only the router) and costs `costs [K]`; returns (it, {expected_cost, expected_ce})."""
    cost = jnp.asarray(costs, jnp.float32).reshape((-1,) + (1,) * (ce.ndim - 1))
    mean = _choice_mean(mask, ce.shape[1:])
    expected_cost, expected_ce = mean(pi * cost), mean(pi * ce)
    return expected_ce + lam * expected_cost, {"expected_cost": expected_cost, "expected_ce": expected_ce}


def exit_taken(gate_logits, threshold: float = 0.5):
    """`gate_logits [E, ...]` -> the exit taken `[...]` (0 .. E, E the final head): the first with g >= threshold."""
    fire = jax.nn.sigmoid(gate_logits) >= threshold
    fire = jnp.concatenate([fire, jnp.ones_like(fire[:1])], axis=0)
    return jnp.argmax(fire, axis=0)


def all_exit_logits(model, params: dict, hidden_states, exit_layers):
    """(IM logits of every exit then the final head `[E + 1, ..., vocab]`, gate logits `[E, ...]`) from a
    teacher-forced pass's `hidden_states` (L + 1 entries: the embedding, then every block's output)."""
    logits = [im_logits(model, params, hidden_states[layer], number) for number, layer in enumerate(exit_layers)]
    gates = [gate_logit(params, jax.lax.stop_gradient(z), number) for number, z in enumerate(logits)]
    final = model._logits(model.final_norm(hidden_states[-1]))
    return jnp.stack([*logits, final]), jnp.stack(gates)


def token_cross_entropy(logits, targets):
    """Per-token cross-entropy `[...]` of `logits [..., vocab]` against `targets [...]`."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]


@dataclasses.dataclass(frozen=True)
class JEIRule:
    """JEI-DNN's exit rule for `confidence_exit.generate_with_exits(..., rule=JEIRule(), rule_params=params)`:
    the IM's logits, and exit when every row's gate g_l >= `threshold`."""

    threshold: float = 0.5

    def __call__(self, model, rule_params, h, exit_number: int, exit_layer: int):
        del exit_layer
        logits = im_logits(model, rule_params, h, exit_number)
        return logits, jnp.all(jax.nn.sigmoid(gate_logit(rule_params, logits, exit_number)) >= self.threshold)
