"""Domain membership: groups are members of domains, and only members see a domain.

Before this, a document without access groups was visible to every user of every domain.
To keep what existing accounts saw, each domain gets a new "<Name> staff" group (a free
name: an existing group is never reused, it might restrict documents) that every existing
non-superuser account joins, and each group that restricts a document becomes a member of
that document's domain. The benchmark and PubMedQA domains of the evaluation commands
(``bench``, ``pubmedqa``, holding only their own documents) become evaluation domains with
no members. Accounts created from now on see nothing until a curator adds them to a member
group.
"""

from django.conf import settings
from django.db import migrations, models

EVALUATION_SOURCES = {"bench": "bench:", "pubmedqa": "pubmedqa:"}


def add_members(apps, schema_editor):
    Domain = apps.get_model("store", "Domain")
    Document = apps.get_model("store", "Document")
    Group = apps.get_model("auth", "Group")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    users = list(User.objects.filter(is_superuser=False))
    for domain in Domain.objects.all():
        documents = Document.objects.filter(domain=domain)
        prefix = EVALUATION_SOURCES.get(domain.slug)
        if prefix and not documents.exclude(source__startswith=prefix).exists():
            domain.purpose = "evaluation"
            domain.save(update_fields=["purpose"])
            continue
        staff = Group.objects.create(name=_free_name(Group, f"{domain.name} staff"))
        domain.member_groups.add(staff)
        for user in users:
            user.groups.add(staff)
        restricting = Group.objects.filter(documents__in=documents).distinct()
        domain.member_groups.add(*restricting)


def _free_name(Group, name: str) -> str:
    candidate, n = name, 1
    while Group.objects.filter(name=candidate).exists():
        n += 1
        candidate = f"{name} {n}"
    return candidate


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("store", "0004_chunk_sets"),
    ]

    operations = [
        migrations.AddField(
            model_name="domain",
            name="member_groups",
            field=models.ManyToManyField(
                blank=True, related_name="member_domains", to="auth.group",
                help_text="Groups whose members see this domain's documents (a document with "
                "access groups of its own only to members of those groups too)."),
        ),
        migrations.AddField(
            model_name="domain",
            name="purpose",
            field=models.CharField(
                choices=[("documents", "Staff documents"),
                         ("evaluation", "Evaluation or benchmark (owned by a command)")],
                default="documents", max_length=20,
                help_text="Evaluation domains belong to the command that made them, which may "
                "empty them; staff documents never go into one."),
        ),
        migrations.AlterField(
            model_name="document",
            name="access_groups",
            field=models.ManyToManyField(
                blank=True, related_name="documents", to="auth.group",
                help_text="Groups that may see this document; none means every member of the "
                "domain."),
        ),
        migrations.RunPython(add_members, migrations.RunPython.noop),
    ]
