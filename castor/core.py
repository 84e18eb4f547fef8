"""castor-kernel 0.5.1's ``castor.core``: the kernel facade ``Castor`` and ``CastorTask`` (``castor.kernel``)."""

from castor.kernel import Castor, CastorTask

__all__ = ["Castor", "CastorTask"]
