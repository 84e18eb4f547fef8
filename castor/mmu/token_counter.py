"""castor-kernel 0.5.1's module path of the token counters."""

from castor.mmu.messages import CharCountEstimator, OfflineEstimator, TokenCounter

__all__ = ["CharCountEstimator", "OfflineEstimator", "TokenCounter"]
