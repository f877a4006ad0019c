"""busi: classify breast ultrasound images as benign, malignant or normal."""

CLASS_NAMES = ("benign", "malignant", "normal")

__version__ = "0.1.0"
