"""`jdistill repro`: the seed papers' claims measured at small scale, over seeds (docs/repro.md)."""

from jdistill.repro.claim import Claim, Context, Plot
from jdistill.repro.registry import all_claims, get_claim
from jdistill.repro.runner import run_claim

__all__ = ["Claim", "Context", "Plot", "all_claims", "get_claim", "run_claim"]
