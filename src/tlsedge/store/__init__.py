"""State shared by the processes of an edge (and, later, by many edges): one interface, one backend per deployment."""

from tlsedge.store.base import Entry, Store, StoreError
from tlsedge.store.sqlite import SqliteStore, open_store

__all__ = ["Entry", "SqliteStore", "Store", "StoreError", "open_store"]
