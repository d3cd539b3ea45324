"""Shared foundations of every step: errors, logging, output writing and run records, parameter
parsing, image and label-image IO and conversion, resampling, illumination clean-up, class names
and outline overlays.

Imports nothing of orgaseg outside this package; numpy, scipy, pandas, tifffile and Pillow only.
"""
