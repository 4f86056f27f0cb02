"""Diffusion and flow models: schedules and parameterisations (`schedules`), denoisers (`denoisers`), samplers
(`samplers`), teacher objectives (`objectives`) and loading trained denoisers (`load`); docs/diffusion.md.

Import the submodules directly (`from jdistill.diffusion import schedules`); this package imports nothing itself so
that its pieces (data, metrics, methods) stay independent.
"""
