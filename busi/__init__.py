"""busi: classify breast ultrasound images as benign, malignant or normal."""

CLASS_NAMES = ("benign", "malignant", "normal")
NORMAL = "normal"  # the class without a lesion: its images get an empty target mask

__version__ = "0.1.0"
