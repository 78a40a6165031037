"""novapurge: remove a stuck Nova instance everywhere, journaled, resumable and reversible."""

__version__ = "0.1.0"
