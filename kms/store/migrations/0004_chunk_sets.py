"""Chunk sets: a version's chunks are built beside the served ones and switched at once.

Existing chunks become one set per version: active where they are served (a ready version,
or the version its document serves while it is processed again), building otherwise.
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def populate(apps, schema_editor):
    schema_editor.execute(
        """
        WITH served AS (
            SELECT v.id, v.status = 'ready' OR EXISTS (
                SELECT 1 FROM store_document AS d WHERE d.current_version_id = v.id
            ) AS active
            FROM store_documentversion AS v
            WHERE EXISTS (SELECT 1 FROM store_chunk AS c WHERE c.version_id = v.id)
        )
        INSERT INTO store_chunkset
            (version_id, state, source, extracted_text, structure, page_count, created_at,
             activated_at)
        SELECT v.id,
               CASE WHEN s.active THEN 'active' ELSE 'building' END,
               'parse',
               CASE WHEN s.active THEN '' ELSE v.extracted_text END,
               CASE WHEN s.active THEN '{}'::jsonb ELSE v.structure END,
               v.page_count, now(),
               CASE WHEN s.active THEN now() END
        FROM store_documentversion AS v JOIN served AS s ON s.id = v.id
        """
    )
    schema_editor.execute(
        """
        UPDATE store_chunk AS c SET chunk_set_id = s.id
        FROM store_chunkset AS s WHERE s.version_id = c.version_id
        """
    )
    schema_editor.execute(
        """
        UPDATE store_documentversion AS v SET active_chunks_id = s.id
        FROM store_chunkset AS s WHERE s.version_id = v.id AND s.state = 'active'
        """
    )


def keep_one_set_per_version(apps, schema_editor):
    """Going back: chunks are unique per version again, so sets being built give way."""
    schema_editor.execute(
        """
        DELETE FROM store_chunk AS c USING store_chunkset AS s
        WHERE c.chunk_set_id = s.id AND s.state = 'building'
          AND EXISTS (SELECT 1 FROM store_chunkset AS a
                      WHERE a.version_id = s.version_id AND a.state = 'active')
        """
    )


class Migration(migrations.Migration):
    dependencies = [("store", "0003_chunk_domain_is_current")]

    operations = [
        migrations.CreateModel(
            name="ChunkSet",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("state", models.CharField(
                    choices=[("building", "Building"), ("active", "Active")], default="building",
                    max_length=10)),
                ("source", models.CharField(
                    choices=[("parse", "Parsed from the stored file"),
                             ("copy", "Copied from the active set (new vectors only)")],
                    default="parse", max_length=10)),
                ("extracted_text", models.TextField(blank=True)),
                ("structure", models.JSONField(blank=True, default=dict)),
                ("page_count", models.PositiveIntegerField(blank=True, null=True)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("activated_at", models.DateTimeField(blank=True, null=True)),
                ("version", models.ForeignKey(
                    on_delete=django.db.models.deletion.CASCADE, related_name="chunk_sets",
                    to="store.documentversion")),
            ],
            options={"ordering": ["version", "-created_at"]},
        ),
        migrations.AddConstraint(
            model_name="chunkset",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state", "building")), fields=("version",),
                name="chunkset_one_building_per_version"),
        ),
        migrations.AddField(
            model_name="chunk",
            name="chunk_set",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="chunks",
                to="store.chunkset"),
        ),
        migrations.AddField(
            model_name="documentversion",
            name="active_chunks",
            field=models.ForeignKey(
                blank=True, help_text="The chunk set served for this version.", null=True,
                on_delete=django.db.models.deletion.SET_NULL, related_name="+",
                to="store.chunkset"),
        ),
        migrations.AddField(
            model_name="documentversion",
            name="attempts",
            field=models.PositiveSmallIntegerField(
                default=0, help_text="Processing steps begun on this file and not finished; a "
                "file that stops the worker KMS_MAX_PROCESSING_ATTEMPTS times fails."),
        ),
        migrations.AddField(
            model_name="documentversion",
            name="queued_at",
            field=models.DateTimeField(
                default=django.utils.timezone.now, help_text="When it was last sent to the "
                "workers."),
        ),
        migrations.RunPython(populate, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="chunk",
            name="chunk_set",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="chunks",
                to="store.chunkset"),
        ),
        migrations.RemoveConstraint(model_name="chunk", name="chunk_unique_ordinal"),
        migrations.RunPython(migrations.RunPython.noop, keep_one_set_per_version),
        migrations.AddConstraint(
            model_name="chunk",
            constraint=models.UniqueConstraint(
                fields=("chunk_set", "ordinal"), name="chunk_unique_ordinal_in_set"),
        ),
        migrations.AlterField(
            model_name="document",
            name="current_version",
            field=models.ForeignKey(
                blank=True, help_text="The newest version with active chunks: the one search "
                "serves.", null=True, on_delete=django.db.models.deletion.SET_NULL,
                related_name="+", to="store.documentversion"),
        ),
        migrations.AlterField(
            model_name="documentversion",
            name="extracted_text",
            field=models.TextField(blank=True, help_text="The text the active chunks index."),
        ),
    ]
