"""Objects of label images: per-object crops (:mod:`.extract`) and shape and intensity
measurements (:mod:`.measurements`).

Imports :mod:`orgaseg_core.common` only; neither TensorFlow nor torch.
"""
