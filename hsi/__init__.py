"""hsi: Hard-Spurious-ImageNet."""
