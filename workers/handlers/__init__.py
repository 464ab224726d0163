"""Built-in model handlers, registered under the ``inferq.models`` entry points."""
