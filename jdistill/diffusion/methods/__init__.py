"""Objectives that distil a diffusion or flow teacher's trajectory into a few-step student (docs/diffusion_methods.md).

One module per family, each a set of pure functions over arrays and denoiser callables: `progressive`,
`consistency` (CD, CT), `consistency_trajectory` (TCD, TDD, Hyper-SD), `consistency_continuous` (image-free
continuous-time consistency), `rectified` (reflow, SlimFlow, TraFlow, shortcut), `solvers` (D-ODE, SFD) and
`guidance` (guidance distillation and its adapter, LoRA and plug-and-play variants); `common` holds the shared
Gaussian-path algebra.
"""
