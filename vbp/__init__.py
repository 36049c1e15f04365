"""vbp: a simulator of China's national volume-based procurement (VBP).

Manufacturer agents bid into national tender rounds under each round's rulebook; a PuLP
optimizer allocates the guaranteed volume among winners; a SimPy timeline runs contracts,
consumption and renewals; metrics compare the simulated history with the published one.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
