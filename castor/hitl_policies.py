"""castor-kernel 0.5.1's ``castor.hitl_policies``: ``auto_approve``, ``auto_reject``, ``interactive``
(``castor.policies``)."""

from castor.policies import auto_approve, auto_reject, interactive

__all__ = ["auto_approve", "auto_reject", "interactive"]
