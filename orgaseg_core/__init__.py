"""orgaseg_core: organoid segmentation and classification for brightfield microscopy.

Every pipeline step is one function in its own module; the CLI (``orgaseg``), the album
solutions and the tests call those functions. Heavy frameworks (TensorFlow, torch) are only
imported inside the modules that need them.
"""

__version__ = "0.1.0"
