"""pytest plugin of repocache (registered through the ``pytest11`` entry point); fixtures arrive with issue 4."""
