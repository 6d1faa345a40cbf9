"""The three domains every installation starts with; more are added in the admin."""

from django.db import migrations

DOMAINS = [
    ("healthcare", "Healthcare", "Clinical guidelines, policies and research abstracts."),
    ("finance", "Finance", "Financial policies, procedures and filings."),
    ("education", "Education", "Course material, academic policies and student services."),
]


def create_domains(apps, schema_editor):
    Domain = apps.get_model("store", "Domain")
    for slug, name, description in DOMAINS:
        Domain.objects.get_or_create(slug=slug, defaults={"name": name, "description": description})


def remove_domains(apps, schema_editor):
    Domain = apps.get_model("store", "Domain")
    Domain.objects.filter(slug__in=[slug for slug, _, _ in DOMAINS], documents=None).delete()


class Migration(migrations.Migration):
    dependencies = [("store", "0001_initial")]
    operations = [migrations.RunPython(create_domains, remove_domains)]
