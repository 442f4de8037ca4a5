"""Diffusion processes: masked text (MDLM) and Gaussian latent."""
