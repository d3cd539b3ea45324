"""The pixel-forest segmentation backend: a random forest on multi-scale pixel features
(the ilastik approach) that tells background, organoid interior and organoid boundary apart,
then regions between boundaries (a watershed of the boundary probability).

Trains in seconds to minutes on CPU from a handful of annotated images, and needs neither
TensorFlow nor torch (scikit-learn, scikit-image; the model is stored with skops, never
pickle). ``train-segmentation --backend forest`` trains it; ``segment`` and ``analyze`` load it
like a StarDist model folder.

Modules: :mod:`.features` (pixel features, training targets, tiling), :mod:`.regions`
(probabilities to labels), :mod:`.model` (the model folder), :mod:`.train`, :mod:`.predict`.
"""
