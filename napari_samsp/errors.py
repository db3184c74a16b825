"""Exceptions with messages meant for the user: one line that says what is wrong and what to do."""


class SamspError(Exception):
    """Base class for errors the CLI and the plugin report as a single line."""


class InputImageError(SamspError, ValueError):
    """An image (or mask) the library cannot use: empty, NaN, wrong dimensions, ..."""


class WeightsError(SamspError):
    """A weights file that is missing, corrupt, untrusted or of another architecture."""


class DataLayoutError(SamspError):
    """A data folder that does not follow ``DIR/images`` + ``DIR/masks``."""
