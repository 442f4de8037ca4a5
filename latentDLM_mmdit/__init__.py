"""MM-LDLM framework core: the shared loader, loop, checkpointing and configs."""
