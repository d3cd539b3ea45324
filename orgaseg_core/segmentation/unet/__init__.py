"""The U-Net segmentation backend (PyTorch): a U-Net trained from scratch tells background,
organoid interior and organoid boundary apart at every pixel, then the boundary probability is
flooded from its basins into regions (:mod:`..forest.regions`, shared with the pixel forest).

Not star-convex: buds and crypts are followed as far as the boundary map goes. Trained with
``train-segmentation --backend unet`` (a CUDA GPU is used when there is one), loaded by
``segment`` and ``analyze`` like the other model folders. Needs torch (the ``classification``
extra); never loaded in a process that has loaded TensorFlow.

Modules: :mod:`.network` (the network; imports torch), :mod:`.model` (the model folder),
:mod:`.train`, :mod:`.predict`.
"""
