"""Statement parameters the Neo4j driver does not format for its debug log.

neo4j 6.x builds the text of every RUN's debug log line eagerly, `" ".join(map(repr, fields))`, whether
or not debug logging is on. For a checkpoint's 231,493 scores (Pythia-1.4B shape) that repr took
longer than packing and sending them (0.3-0.4 s of a 1.0 s CREATE, loaded machine; floats repr
slowly), so every list parameter goes in as a `QuietList`: a plain list to the packer (the
Rust and the pure-Python packstream encoders accept list subclasses, byte for byte the same), with a
one-line repr.
"""

from __future__ import annotations


class QuietList(list):
    """A list whose repr is its length: what the driver's debug line shows of it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<list of {len(self)}>"


def quiet(value):
    """`value` with every list (also inside dicts and lists) a QuietList; other values unchanged."""
    if isinstance(value, list):
        return value if isinstance(value, QuietList) else QuietList(value)
    if isinstance(value, dict):
        return {k: quiet(v) for k, v in value.items()}
    return value
