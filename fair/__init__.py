"""FAIR: unsupervised fine-grained adaptation of CLIP (the method library; never imports Ray)."""
__version__ = "0.1.0"
