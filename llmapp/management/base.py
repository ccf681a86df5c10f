"""The base of llmapp's management commands: a mistake on the command line is one line."""

import atexit
import gc

from django.core.management.base import BaseCommand, CommandParser

from llmapp.conf.secrets import redact


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

    def run_from_argv(self, argv):
        """Run as the process's command (manage.py, not call_command): the process ends after it."""
        global _exit_prepared
        if not _exit_prepared:
            _exit_prepared = True
            atexit.register(_leave_to_the_os)
        super().run_from_argv(argv)

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Django builds a CommandParser itself; only error() differs, so swap the class
        # rather than copy create_parser().
        parser.__class__ = OneLineErrorParser
        return parser


_exit_prepared = False


def _leave_to_the_os():
    """At exit, the interpreter's last garbage collections walk every object that Django and a
    provider's SDK made: 0.1-0.3 s after a batch, measured, a few percent of its run. What is
    garbage now is collected (and finalized: a file in a reference cycle is flushed); what
    is still alive is frozen, and left to the OS. The exit handlers registered before this
    one (the usage events' drain, Sentry's flush, logging's) run after it, as they would."""
    gc.collect()
    gc.freeze()
