"""MM-LDLM: the framework every family builds on (configs, objective registry, data, training loop,
diffusion processes, prefetch, plots). It imports no family."""
