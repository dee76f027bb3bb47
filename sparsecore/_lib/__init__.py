"""Private helpers shared by the core: namespaces, validation, loops."""
