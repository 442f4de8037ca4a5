"""LatentWire: a shared continuous interlingua (bytes -> soft tokens) read by frozen LLMs through
per-model adapters, trained on extractive QA (latentwire/README.md)."""
