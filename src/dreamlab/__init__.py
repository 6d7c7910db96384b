"""dreamlab: world models that learn to act inside their own dream."""

__version__ = "0.1.0"
