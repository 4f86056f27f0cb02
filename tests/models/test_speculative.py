"""Early-exit self-speculative decoding: greedy output equals plain greedy decoding, sampled output is
distributed as the full model's, the shared-cache bookkeeping (all drafts accepted, none accepted, EOS), and
bad options."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.bench.early_exit import identity_above
from jdistill.errors import UserError
from jdistill.models import ModelConfig, Transformer
from jdistill.models.generate import generate
from jdistill.models.speculative import (
    choose_draft_len,
    draft_costs,
    self_speculative_generate,
    update_posterior,
)

LM = ModelConfig(
    kind="lm",
    num_layers=4,
    d_model=32,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    vocab_size=50,
    gate="headwise",
    qk_norm=True,
    max_seq_len=128,
)


def _ragged_prompts(seed: int, batch: int, width: int, vocab: int):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, batch)
    mask = np.arange(width)[None, :] >= (width - lengths)[:, None]
    prompt = np.where(mask, rng.integers(2, vocab, (batch, width)), 0)
    return prompt, mask


@pytest.mark.parametrize("exit_layer, draft_len, head, loop", [(1, 3, "final", "scan"), (2, 4, "exit", "unrolled")])
def test_greedy_output_equals_plain_greedy_decoding(exit_layer, draft_len, head, loop):
    config = dataclasses.replace(LM, exit_layers=(2,))
    model = Transformer(config, rngs=nnx.Rngs(0))
    prompt, mask = _ragged_prompts(0, 16, 7, config.vocab_size)
    expected = generate(model, prompt, prompt_mask=mask, max_new_tokens=12)
    tokens, stats = self_speculative_generate(
        model,
        prompt,
        mask,
        exit_layer=exit_layer,
        draft_len=draft_len,
        max_new_tokens=12,
        draft_head=head,
        draft_loop=loop,
    )
    np.testing.assert_array_equal(tokens, expected)
    assert stats.drafted > 0 and stats.emitted >= 16 * 11  # every token after the prefill's first


def test_every_draft_accepted_when_the_upper_blocks_are_the_identity():
    model = identity_above(Transformer(LM, rngs=nnx.Rngs(1)), 2)
    prompt, mask = _ragged_prompts(1, 4, 5, LM.vocab_size)
    expected = generate(model, prompt, prompt_mask=mask, max_new_tokens=11)
    tokens, stats = self_speculative_generate(model, prompt, mask, exit_layer=2, draft_len=4, max_new_tokens=11)
    np.testing.assert_array_equal(tokens, expected)
    assert stats.acceptance_rate == 1.0
    # 1 token from the prefill, then rounds of d + 1 = 5: ceil(10 / 5) = 2 rounds per row
    assert stats.rounds == 2 and stats.tokens_per_round == 5.0


@pytest.mark.slow
def test_random_drafts_are_mostly_rejected_and_still_exact():
    model = Transformer(LM, rngs=nnx.Rngs(2))
    prompt, mask = _ragged_prompts(2, 8, 6, LM.vocab_size)
    tokens, stats = self_speculative_generate(model, prompt, mask, exit_layer=1, draft_len=3, max_new_tokens=9)
    np.testing.assert_array_equal(tokens, generate(model, prompt, prompt_mask=mask, max_new_tokens=9))
    assert stats.acceptance_rate < 0.5  # an untrained early exit: the full model corrects most drafts
    assert stats.emitted == stats.accepted + stats.row_rounds  # each row-round: its accepted drafts + 1 token


def test_eos_ends_a_row_and_pads_the_rest():
    model = identity_above(Transformer(LM, rngs=nnx.Rngs(3)), 2)
    prompt, mask = _ragged_prompts(3, 6, 5, LM.vocab_size)
    plain = generate(model, prompt, prompt_mask=mask, max_new_tokens=10)
    eos = int(plain[0, 3])  # a token the first row emits at step 3
    expected = generate(model, prompt, prompt_mask=mask, max_new_tokens=10, eos_id=eos, pad_id=0)
    tokens, _ = self_speculative_generate(
        model, prompt, mask, exit_layer=2, draft_len=4, max_new_tokens=10, eos_id=eos, pad_id=0
    )
    np.testing.assert_array_equal(tokens, expected)
    assert (np.asarray(tokens)[0, 4:] == 0).all() or eos in np.asarray(plain)[0, :3]


def _exact_joint(model, prompt, temperature, steps):
    """P(x_1..x_steps | prompt) for every sequence, by enumeration (one full forward over all of them)."""
    sequences = list(itertools.product(range(model.config.vocab_size), repeat=steps))
    tokens = jnp.asarray([list(prompt) + list(sequence) for sequence in sequences])
    log_p = jax.nn.log_softmax(model(tokens).logits[:, len(prompt) - 1 : -1] / temperature, axis=-1)
    chosen = jnp.take_along_axis(log_p, tokens[:, len(prompt) :, None], axis=2)[..., 0]
    return dict(zip(sequences, np.exp(np.asarray(chosen.sum(axis=1), np.float64)), strict=True))


@pytest.mark.parametrize("control", ["fixed", pytest.param("thompson", marks=pytest.mark.slow)])
def test_speculative_sampling_draws_from_the_full_models_distribution(control):
    config = dataclasses.replace(LM, vocab_size=6, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32)
    model = Transformer(config, rngs=nnx.Rngs(4))
    prompt, temperature, steps, samples = [2, 3, 4], 1.5, 2, 6000
    tokens, stats = self_speculative_generate(
        model,
        np.tile(prompt, (samples, 1)),
        exit_layer=1,
        draft_len=2,
        max_new_tokens=steps,
        temperature=temperature,
        rng=jax.random.key(7),
        draft_control=control,
    )
    assert 0.05 < stats.acceptance_rate < 0.95  # both the acceptance and the residual branch are exercised
    exact = _exact_joint(model, prompt, temperature, steps)
    counts = {seq: 0 for seq in exact}
    for row in np.asarray(tokens):
        counts[tuple(int(t) for t in row)] += 1
    expected = np.array([exact[seq] * samples for seq in exact])
    observed = np.array([counts[seq] for seq in exact])
    assert abs(expected.sum() - samples) < 1e-3 * samples
    # Pearson chi-square over the 36 outcomes (35 degrees of freedom): the 0.999 quantile is 66.6.
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 66.6, chi2


@pytest.mark.slow
def test_draft_distribution_alone_would_fail_the_same_test():
    """The chi-square test above can fail: the early exit's own distribution is far from the full model's."""
    config = dataclasses.replace(LM, vocab_size=6, d_model=16, num_heads=2, num_kv_heads=1, mlp_dim=32)
    model = Transformer(config, rngs=nnx.Rngs(4))
    prompt, temperature = [2, 3, 4], 1.5
    full = jax.nn.softmax(model(jnp.asarray([prompt])).logits[0, -1] / temperature)
    h = model(jnp.asarray([prompt]), return_hidden_states=True).hidden_states[1]
    draft = jax.nn.softmax(model._logits(model.final_norm(h))[0, -1] / temperature)
    samples = 6000
    chi2 = float(np.sum((np.asarray(draft) * samples - np.asarray(full) * samples) ** 2 / (np.asarray(full) * samples)))
    assert chi2 > 66.6


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(exit_layer=4), "exit_layer: expected a block number in [1, 3]"),
        (dict(exit_layer=0), "exit_layer"),
        (dict(draft_len=0), "draft_len: expected a positive integer"),
        (dict(temperature=-1.0), "temperature: expected a finite number >= 0"),
        (dict(draft_head="exit"), "draft_head=exit: the model has no exit at block 2"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(draft_loop="unroll"), "draft_loop: expected auto, scan or unrolled"),
    ],
)
def test_bad_options_are_one_line_errors(options, message):
    model = Transformer(LM, rngs=nnx.Rngs(0))
    kwargs = dict(exit_layer=2, draft_len=2, max_new_tokens=3) | options
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        self_speculative_generate(model, np.ones((1, 3), np.int32), **kwargs)
    assert "\n" not in str(info.value)


def test_recurrent_models_are_refused():
    model = Transformer(dataclasses.replace(LM, layer_pattern="DA"), rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match="attention-only"):
        self_speculative_generate(model, np.ones((1, 3), np.int32), exit_layer=2, draft_len=2, max_new_tokens=3)


@pytest.mark.slow  # two models x 100 tokens; the controller's pure parts are tested fast below
def test_thompson_control_drafts_long_when_drafts_are_accepted_and_short_when_not():
    good = identity_above(Transformer(LM, rngs=nnx.Rngs(1)), 1)  # every draft accepted
    bad = Transformer(LM, rngs=nnx.Rngs(2))  # an untrained exit: most drafts rejected
    prompt, mask = _ragged_prompts(4, 8, 5, LM.vocab_size)
    lengths = {}
    for name, model in (("good", good), ("bad", bad)):
        tokens, stats = self_speculative_generate(
            model, prompt, mask, exit_layer=1, draft_len=6, max_new_tokens=100, draft_control="thompson"
        )
        np.testing.assert_array_equal(tokens, generate(model, prompt, prompt_mask=mask, max_new_tokens=100))
        lengths[name] = stats.mean_draft_len
    # Positions past the drafted length are never observed, so the posterior explores them for a while.
    assert lengths["good"] > 4.5 and lengths["bad"] < 2.5, lengths


def test_choose_draft_len_maximises_expected_tokens_per_cost():
    costs = jnp.asarray(draft_costs(8, 2, 6))  # (k + 1) 2/8 + 6/8
    np.testing.assert_allclose(costs, [(k + 1) / 4 + 0.75 for k in range(1, 7)])
    keys = jax.random.split(jax.random.key(0), 50)
    sure = np.full(6, 1e4)
    always = [int(choose_draft_len(k, jnp.asarray(sure), jnp.zeros(6), costs)) for k in keys]
    never = [int(choose_draft_len(k, jnp.zeros(6), jnp.asarray(sure), costs)) for k in keys]
    assert set(always) == {6} and set(never) == {1}
    # acceptance 0.5 at every position: tokens(k) = 2 - 0.5^k, tokens / cost is best at k = 1 here
    half = [int(choose_draft_len(k, jnp.asarray(sure), jnp.asarray(sure), costs)) for k in keys]
    tokens = 2 - 0.5 ** np.arange(1, 7)
    assert set(half) == {1 + int(np.argmax(tokens / np.asarray(costs)))}


def test_posterior_counts_each_reached_draft_position():
    accepted_counts, rejected_counts = update_posterior(
        jnp.zeros(4),
        jnp.zeros(4),
        accepted=jnp.array([0, 2, 3, 3]),
        limit=3,
        active=jnp.array([True, True, True, False]),
    )
    # row 0: position 0 rejected; row 1: 0, 1 accepted, 2 rejected; row 2: all 3 drafts accepted (no rejection at
    # position 3, which was not drafted); row 3 inactive
    np.testing.assert_array_equal(accepted_counts, [2, 2, 1, 0])
    np.testing.assert_array_equal(rejected_counts, [1, 0, 1, 0])


@pytest.mark.parametrize("control", ["fixed", "thompson"])
def test_unrolled_drafts_make_a_round_one_loop_iteration(control):
    """draft_loop="unrolled": the decoding loop's body holds no loop of its own (on an accelerator every loop
    iteration waits for the host); "scan" nests one."""
    from jdistill.models.speculative import SpeculativeDecoder, _speculative

    model = Transformer(LM, rngs=nnx.Rngs(0))
    options = dict(exit_layer=1, draft_len=3, max_new_tokens=8, temperature=0.0, head="final", control=control)
    prompt = jnp.ones((1, 4), jnp.int32)

    def round_body(loop):
        jaxpr = jax.make_jaxpr(
            lambda: _speculative(
                model, prompt, prompt > 0, jax.random.key(0), eos_id=None, pad_id=0, loop=loop, **options
            )
        )()
        loops = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "while"]
        return str(loops[-1].params["body_jaxpr"])  # the rounds (a key split before them may be a loop too)

    assert "while[" not in round_body("unrolled") and "scan[" not in round_body("unrolled")
    assert "scan[" in round_body("scan")
    decoder = SpeculativeDecoder(model, exit_layer=1, draft_len=3, max_new_tokens=8, draft_control=control)
    assert decoder.options["loop"] == ("scan" if jax.default_backend() == "cpu" else "unrolled")  # "auto"


@pytest.mark.parametrize("loop", ["scan", pytest.param("unrolled", marks=pytest.mark.slow)])
def test_the_compiled_rounds_do_not_copy_the_caches(loop):
    """The draft steps, the verify pass's (d + 1)-row writes and the rollback (by position only) update the caches
    in place: no copy instruction in the compiled decoding loops (fusions included) moves a cache-sized array.
    With values stored `[.., max_len, head_dim]` every block call transposed its value cache for the attention."""
    from jdistill.models.speculative import SpeculativeDecoder, _generate
    from tests.hlo_copies import cache_sized, loop_copy_shapes

    model = Transformer(dataclasses.replace(LM, num_layers=2), rngs=nnx.Rngs(0))
    decoder = SpeculativeDecoder(model, exit_layer=1, draft_len=3, max_new_tokens=8, draft_loop=loop)
    prompt = np.ones((1, 4), np.int32)
    args = (decoder.graphdef, decoder.params, prompt, prompt > 0, jax.random.key(0))
    shapes = loop_copy_shapes(_generate.lower(*args, **decoder.options).compile().as_text())
    cache_shape = model.init_cache(1, 4 + 8 + 3 + 1)[0].keys.shape
    assert cache_sized(shapes, cache_shape) == []
