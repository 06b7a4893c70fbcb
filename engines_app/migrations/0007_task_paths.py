"""The task functions moved into role packages (alerts/, jobs/): point existing schedules at
their new paths. Tasks already queued under the old paths do not follow: let the task cluster
drain its queue before upgrading (see docs/operations.md)."""

from django.db import migrations

MOVED = {
    "engines_app.alerts.check_alerts": "engines_app.alerts.rules.check_alerts",
    "engines_app.retention.run_retention": "engines_app.jobs.retention.run_retention",
    "engines_app.tasks.daily_reset": "engines_app.jobs.tasks.daily_reset",
}


def forwards(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for old, new in MOVED.items():
        Schedule.objects.using(schema_editor.connection.alias).filter(func=old).update(func=new)


def backwards(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for old, new in MOVED.items():
        Schedule.objects.using(schema_editor.connection.alias).filter(func=new).update(func=old)


class Migration(migrations.Migration):
    dependencies = [
        ("engines_app", "0006_status_changed_at"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
