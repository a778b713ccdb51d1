"""bpo: Bootstrapped and Blind Preference Optimization for multimodal LLMs.

Importing the package is cheap on purpose (no torch, no transformers): the CLI's ``--help``
must be instant, and the data/metric modules are usable without the training stack.
"""

__version__ = "0.1.0"

from bpo.errors import BpoError  # noqa: E402  (cheap, stdlib-only)

__all__ = ["BpoError", "__version__"]
