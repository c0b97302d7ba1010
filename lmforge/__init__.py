"""lmforge: from a language-model checkpoint to a measured deployment on CPUs and small chips."""

__version__ = "0.1.0"

from lmforge.api import LoadedModel, load  # noqa: E402
from lmforge.sampling import SamplingParams  # noqa: E402

__all__ = ["LoadedModel", "SamplingParams", "__version__", "load"]
