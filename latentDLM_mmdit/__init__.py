"""The text<->latent MMDiT family: model, objective, samplers, metrics, entrypoints and configs
(plus shims for the framework paths users type: data_simple, prefetch, plot)."""
