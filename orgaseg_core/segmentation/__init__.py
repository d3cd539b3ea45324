"""Instance segmentation with StarDist2D: the model folder (:mod:`.model`), training
(:mod:`.train`), prediction (:mod:`.predict`) and evaluation against ground truth
(:mod:`.evaluation`).

Imports :mod:`orgaseg_core.common` and :mod:`orgaseg_core.qupath`. TensorFlow and StarDist are
imported only inside the functions that need them (never torch), so :mod:`.evaluation` runs
without them.
"""
