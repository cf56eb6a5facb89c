"""The one exception type for bad input: a file, a flag or a config that is not what ds_train expects.

main() prints it as a single line (no traceback) and exits with status 2, so every message must name the
file or flag at fault and say what was expected.
"""


class UserError(Exception):
    pass


def usage_error(message: str):
    """argparse's error hook for ds_train's commands: a UserError instead of argparse's exit."""
    raise UserError(f"{message} (see --help)")
