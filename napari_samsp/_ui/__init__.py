"""The napari UI of napari-samsp, one small module per panel.

Panels only wire Qt widgets and napari layers to the Qt-free core
(``napari_samsp.interactive``, ``autoseg``, ``store``, ``export``, ...).
"""
