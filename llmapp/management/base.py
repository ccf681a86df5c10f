"""The base of llmapp's management commands: a mistake on the command line is one line."""

from django.core.management.base import BaseCommand, CommandParser

from llmapp.redaction import redact


class OneLineErrorParser(CommandParser):
    """Report a bad argument in one line, the way a CommandError is reported, and exit 1.

    argparse would print the whole usage and exit 2; called through call_command, Django's
    parser raises CommandError instead of exiting, and that is kept.
    """

    def error(self, message):
        if not self.called_from_command_line:
            super().error(message)
        # The same shape and status as every other bad input, so that scripts see one kind.
        self.exit(1, f"CommandError: {redact(message)}; see `{self.prog} --help`.\n")


class LLMCommand(BaseCommand):
    """A BaseCommand whose argument errors are one line (see OneLineErrorParser)."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Django builds a CommandParser itself; only error() differs, so swap the class
        # rather than copy create_parser().
        parser.__class__ = OneLineErrorParser
        return parser
