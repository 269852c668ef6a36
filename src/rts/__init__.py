"""rts-seg: Retrogressive Thaw Slump segmentation under extreme class imbalance."""

__version__ = "0.1.0"
