"""napari-samsp: self-prompted Segment Anything for napari, with a learning annotation loop.

Importing the package is cheap on purpose: torch and napari are imported by the
submodules that need them, so the CLI can set thread policy first and napari can
read the plugin manifest without loading a model.
"""

__version__ = "0.1.0"
