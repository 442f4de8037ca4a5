"""Evaluation written once for every family: samplers, validation NELBO, generative perplexity."""
