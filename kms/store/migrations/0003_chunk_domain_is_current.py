"""Copy each chunk's domain and "served" flag onto the chunk, so filters need no join."""

import django.db.models.deletion
from django.db import migrations, models


def populate(apps, schema_editor):
    schema_editor.execute(
        """
        UPDATE store_chunk AS c
        SET domain_id = d.domain_id, is_current = (c.version_id = d.current_version_id)
        FROM store_document AS d
        WHERE d.id = c.document_id
        """
    )


class Migration(migrations.Migration):
    dependencies = [("store", "0002_default_domains")]

    operations = [
        migrations.AddField(
            model_name="chunk",
            name="domain",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+",
                to="store.domain",
            ),
        ),
        migrations.AddField(
            model_name="chunk",
            name="is_current",
            field=models.BooleanField(
                default=False, help_text="Belongs to the version its document serves."
            ),
        ),
        migrations.RunPython(populate, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="chunk",
            name="domain",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="store.domain"
            ),
        ),
        migrations.AddIndex(
            model_name="chunk",
            index=models.Index(
                condition=models.Q(("is_current", True)), fields=["domain", "document"],
                name="chunk_current_by_domain",
            ),
        ),
    ]
