"""Test support: in-memory fakes of the runtime's ports (``fakes``).

Why a package: the pipeline tests and the contract suites (``tests/contract/``) share the
fakes, and the contract suites are what keep them honest against the real adapters.
"""

from support.fakes import MemoryDedup, MemoryObjectStore, StoredObject

__all__ = ["MemoryDedup", "MemoryObjectStore", "StoredObject"]
