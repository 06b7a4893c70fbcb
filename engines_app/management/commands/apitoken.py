from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from engines_app.api.tokens import (
    TokenNotFound,
    api_token_create,
    api_token_list,
    api_token_revoke,
)


class Command(BaseCommand):
    help = "Create, list and revoke API tokens. A new token's key is printed once."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Create a token for USER; print its key.")
        create.add_argument("user", help="The username the token acts as.")
        create.add_argument("name", help="What uses it, e.g. grafana or deploy.")
        actions.add_parser("list", help="Every token: id, name, user, created, last used.")
        revoke = actions.add_parser("revoke", help="Delete a token; its key stops working.")
        revoke.add_argument("token", help="The token's name, or its id when names repeat.")

    def handle(self, *args, action, **options):
        {"create": self.create, "list": self.list_tokens, "revoke": self.revoke}[action](**options)

    def create(self, *, user, name, **options):
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"no user {user!r}")
        if not owner.is_active:
            raise CommandError(f"user {user!r} is not active")
        _token, key = api_token_create(user=owner, name=name)
        self.stdout.write(key)
        self.stderr.write("Copy the key now: it is not shown again.")

    def list_tokens(self, **options):
        self.stdout.write(f"{'id':>4}  {'name':20}  {'user':16}  {'created':20}  last used")
        for token in api_token_list():
            used = f"{token.last_used_at:%Y-%m-%d %H:%M:%S}" if token.last_used_at else "never"
            created = f"{token.created_at:%Y-%m-%d %H:%M:%S}"
            user = token.user.get_username()
            self.stdout.write(f"{token.pk:>4}  {token.name:20}  {user:16}  {created:20}  {used}")

    def revoke(self, *, token, **options):
        try:
            revoked = api_token_revoke(name_or_id=token)
        except TokenNotFound as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Revoked API token {revoked.name} ({revoked.key_prefix}…)")
