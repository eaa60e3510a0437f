"""Hard-Spurious-ImageNet generation (paper 000, §4): source index -> recipe -> assets -> samples.

recipe     which foreground, background, size and position each sample gets
pairs      v2's foreground/background class pairs
assets     per source image: the inpainted background, the core crop (and its alpha mask)
inpaint    the maskers and inpainters that make the assets
spec       what a build is: the dataset spec with its defaults, the build's keys
layout     the built dataset folder: its files, completeness (their only owner)
compose    recipe row + assets -> one sample
build      the sharded, resumable asset build (`hsi-generate build`)
export     samples as image files (`hsi-generate export`)
validate   the deep check of a build (`hsi-generate validate`)
"""
