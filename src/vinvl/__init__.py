"""vinvl: the VinVL detector, its file formats and the Oscar+ model in pure PyTorch."""

__version__ = "0.1.0"
