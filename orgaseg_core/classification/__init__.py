"""Morphological classification of object crops with torchvision networks: crop data
(:mod:`.crops`), networks and checkpoints (:mod:`.networks`), training (:mod:`.train`) and
prediction (:mod:`.predict`).

Imports :mod:`orgaseg_core.common` and :mod:`orgaseg_core.qupath`. torch is imported by
:mod:`.crops` and :mod:`.networks` and inside the functions of the others (never TensorFlow).
"""
