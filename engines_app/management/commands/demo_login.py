import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from levipanel.files import write_private

USERNAME = "admin"


class Command(BaseCommand):
    help = "Create the demo superuser 'admin' once and print its login."

    def handle(self, *args, **options):
        password_file = settings.DATA_DIR / ".demo_password"
        user_model = get_user_model()
        user = user_model.objects.filter(username=USERNAME).first()
        if user is None or not password_file.exists():
            password = secrets.token_urlsafe(12)
            if user is None:
                user = user_model.objects.create_superuser(USERNAME, "", password)
            else:
                user.set_password(password)
                user.save(update_fields=["password"])
            write_private(password_file, password)
        password = password_file.read_text().strip()
        self.stdout.write(f"Demo login: username {USERNAME}  password {password}")
