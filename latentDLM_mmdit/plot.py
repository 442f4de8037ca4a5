"""Kept for the path users already type (``python -m latentDLM_mmdit.plot RUN_DIR``); the plots
live in ``mmldlm.plot``."""
from mmldlm.plot import default_metrics, main, plot

__all__ = ["default_metrics", "main", "plot"]

if __name__ == "__main__":
    main()
