from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "search.portal"
    label = "portal"
    verbose_name = "Staff portal"
