"""Rule rewards for math answers and the registry that loads them by name or plugin path."""
