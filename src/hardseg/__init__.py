"""hardseg: which hard-pixel training strategy works, by how much, and does it survive a domain shift."""

__version__ = "0.1.0"
