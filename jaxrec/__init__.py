"""jaxrec: self-attention sequence recall (seq2seq u2i) in JAX/Flax.

Importing the package is cheap on purpose: `jaxrec.recall` must run without JAX.
"""

__version__ = "0.1.0"
