"""The claims `jdistill repro` knows, in the order of issue 18's table."""

from __future__ import annotations

import difflib

from jdistill.errors import ConfigError
from jdistill.repro.claim import Claim


def all_claims() -> dict[str, Claim]:
    from jdistill.repro.claims import (
        activations,
        adr,
        attention_sink,
        born_again,
        diffusion_few_step,
        gated_deltanet,
        gkd_on_policy,
        head_gating,
        label_noise,
        multi_exit,
        pskd,
        quantized,
        random_teacher,
        teacher_guidance,
    )

    ordered = [
        label_noise.CLAIM,
        teacher_guidance.CLAIM,
        born_again.CLAIM,
        pskd.CLAIM,
        random_teacher.CLAIM,
        attention_sink.CLAIM,
        activations.CLAIM,
        gated_deltanet.CLAIM,
        gkd_on_policy.CLAIM,
        adr.CLAIM,
        multi_exit.CLAIM,
        quantized.CLAIM,
        head_gating.CLAIM,
        diffusion_few_step.CLAIM,
    ]
    return {claim.name: claim for claim in ordered}


def get_claim(name: str) -> Claim:
    known = all_claims()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"repro {name}: unknown claim{hint}; claims: {', '.join(known)} (or all)")
    return known[name]
