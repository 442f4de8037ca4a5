"""Kept for the path users already type (``python -m latentDLM_mmdit.prefetch ...``); the one
prefetch implementation is ``mmldlm.prefetch``."""
import sys

from mmldlm.prefetch import (
    LOCK,
    MARKER,
    OWNER,
    PrefetchError,
    check_if_prefetched,
    main,
    prefetch,
    read_marker,
    require_complete,
)

__all__ = ["LOCK", "MARKER", "OWNER", "PrefetchError", "check_if_prefetched", "main", "prefetch", "read_marker",
           "require_complete"]

if __name__ == "__main__":
    sys.exit(main())
