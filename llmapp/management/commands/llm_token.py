"""Create, list and revoke bearer tokens of llmapp's JSON API."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from llmapp.api.tokens import create_token
from llmapp.management.base import LLMCommand


class Command(LLMCommand):
    help = (
        "Create (printed once, kept hashed), list or revoke bearer tokens of the JSON API; a token "
        "acts with its user's permissions."
    )

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = actions.add_parser("create", help="Create a token for USER and print it (only this once).")
        create.add_argument("user", metavar="USER", help="The username the token acts as.")
        create.add_argument("--name", default="", help="What the token is for, e.g. 'deploy pipeline'.")
        listing = actions.add_parser("list", help="List tokens (their first characters), of USER or all.")
        listing.add_argument("user", metavar="USER", nargs="?")
        revoke = actions.add_parser("revoke", help="Revoke every token of USER, or only --prefix's.")
        revoke.add_argument("user", metavar="USER")
        revoke.add_argument("--prefix", help="Revoke only the token starting with this (from `list`).")
        for sub in (create, listing, revoke):
            sub.__class__ = parser.__class__
            sub.called_from_command_line = getattr(parser, "called_from_command_line", False)

    def handle(self, *args, action, **options):
        from llmapp.models import ApiToken

        if action == "create":
            record, token = create_token(self.user(options["user"]), options["name"])
            self.stderr.write(f"Created token {record.prefix}… for {record.user}; it is shown only now:")
            self.stdout.write(token)
        elif action == "list":
            tokens = ApiToken.objects.select_related("user")
            if options["user"]:
                tokens = tokens.filter(user=self.user(options["user"]))
            for record in tokens:
                used = record.last_used_at.isoformat(timespec="seconds") if record.last_used_at else "never"
                self.stdout.write(f"{record.prefix}…  {record.user}  {record.name or '-'}  last used {used}")
        else:
            tokens = ApiToken.objects.filter(user=self.user(options["user"]))
            if options["prefix"]:
                tokens = tokens.filter(prefix__startswith=options["prefix"].rstrip("…"))
            count, _ = tokens.delete()
            if not count:
                raise CommandError(
                    f"no token of {options['user']!r} to revoke"
                    + (f" starting with {options['prefix']!r}." if options["prefix"] else ".")
                )
            self.stdout.write(f"Revoked {count} token(s) of {options['user']}.")

    def user(self, username):
        model = get_user_model()
        try:
            return model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            raise CommandError(
                f"no user {username!r}; create one with `manage.py createsuperuser`."
            ) from None
