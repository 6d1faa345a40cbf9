from django.apps import AppConfig


class StoreConfig(AppConfig):
    name = "kms.store"
    label = "store"
    verbose_name = "Document store"
