"""orgaseg_core: organoid segmentation and classification for brightfield microscopy.

The public API is :mod:`orgaseg_core.steps` (one function per pipeline step); the ``orgaseg``
command line (:mod:`orgaseg_core.cli`) and the album solutions (through
:mod:`orgaseg_core.album_support`) call it. The subpackages mirror the pipeline, each importing
only those below it:

- :mod:`orgaseg_core.common`: errors, logging, outputs and run records, parameters, image IO,
  resampling, illumination, class names, overlays;
- :mod:`orgaseg_core.qupath`: the QuPath GeoJSON format;
- :mod:`orgaseg_core.data`: demo data, sort-crops, annotations-to-masks, preprocess, split;
- :mod:`orgaseg_core.segmentation`: StarDist model folder, training, prediction, evaluation;
- :mod:`orgaseg_core.objects`: object crops and measurements;
- :mod:`orgaseg_core.classification`: crop data, networks and checkpoints, training, prediction;
- :mod:`orgaseg_core.pipelines`: analyze and example.

Heavy frameworks (TensorFlow, torch) are imported only inside the modules that need them.
"""

__version__ = "0.21.0"
