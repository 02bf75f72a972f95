"""One module per ``scorerefine`` sub-command: ``HELP``, ``add_arguments(parser)``, ``run(args)``."""
