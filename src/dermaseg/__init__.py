"""dermaseg: skin-lesion segmentation in dermoscopy images with DeepLab-v3."""

__version__ = "0.1.0"
