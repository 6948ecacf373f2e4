"""reasonlens: find, explain and steer the reasoning features of language models with SAEs.

The library behind the notebook book in ``notebooks/``. One module per concern; see README.md.
"""

__version__ = "0.1.0"
