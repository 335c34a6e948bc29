"""sisa: exact machine unlearning for PyTorch (Sharded, Isolated, Sliced, Aggregated training).

>>> from sisa import SISAClassifier, Settings
"""

from sisa.api import SISAClassifier, train_workspace
from sisa.errors import SisaError
from sisa.settings import Settings

__version__ = "0.1.0"
__all__ = ["SISAClassifier", "Settings", "SisaError", "train_workspace", "__version__"]
