"""Data sources: ordered, fingerprinted image collections with stable sample ids."""

from kdcache.data.imagefolder import ImageFolderSource
from kdcache.data.rgb import to_rgb
from kdcache.data.source import DataSourceError, ImageSource

__all__ = ["DataSourceError", "ImageFolderSource", "ImageSource", "to_rgb"]
