"""On PostgreSQL, engine rows keep half of each page free: a heartbeat flush changes no
indexed column, so each row's new version fits on its own page (a HOT update) and no
index is written. Every page full (the default) made a flush of 10,000 beats write
every index of every row. Nothing to do on SQLite, which updates rows in place."""

from django.db import migrations

FILLFACTOR = 50


def set_fillfactor(apps, schema_editor, value=FILLFACTOR):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("engines_app", "Engine")._meta.db_table)
    schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {int(value)})")


def reset_fillfactor(apps, schema_editor):
    set_fillfactor(apps, schema_editor, 100)


class Migration(migrations.Migration):
    dependencies = [("engines_app", "0013_exchanges")]

    operations = [migrations.RunPython(set_fillfactor, reset_fillfactor)]
