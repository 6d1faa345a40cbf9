"""The admin: the store and the model registry (``store``), curation of what people said and
read (``curation``). Every page works on the selectors of ``kms.access``."""

from kms.admin import curation, store
from kms.admin.common import access_of

__all__ = ["access_of", "curation", "store"]
