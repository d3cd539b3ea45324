"""The data steps that turn a QuPath project into training data: ``demo-data`` (generated example
data), ``sort-crops``, ``annotations-to-masks``, ``preprocess`` and ``split``.

Imports :mod:`orgaseg_core.common` and :mod:`orgaseg_core.qupath`; never TensorFlow or torch.
"""
